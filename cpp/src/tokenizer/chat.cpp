#include "tokenlane/chat.hpp"

#include <nlohmann/json.hpp>
#include <string>

namespace tokenlane {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& where, const std::string& what) {
  throw Error(ErrorCode::invalid_argument, "chat request: " + where + " " + what);
}

struct Rules {
  long per_message = 3;  // <|start|>{role/name}\n{content}<|end|>\n
  long per_name = 1;
  long reply_priming = 3;  // every reply is primed with <|start|>assistant<|message|>
  long func_init = 7;      // tool definitions: o200k models 7, cl100k models 10
  long prop_init = 3, prop_key = 3, enum_init = -3, enum_item = 3, func_end = 12;
};

Rules rules_for(const Encoding& enc, std::string_view model) {
  Rules r;
  if (model == "gpt-3.5-turbo-0301") {
    r.per_message = 4;  // {role/name} with role omitted when a name is given
    r.per_name = -1;
  }
  if (enc.name() != "o200k_base" && enc.name() != "o200k_harmony") r.func_init = 10;
  return r;
}

class Counter {
 public:
  Counter(const Encoding& enc, Rules rules) : enc_(enc), rules_(rules) {}

  long text(const std::string& s) const { return static_cast<long>(enc_.count(s)); }

  long message(const json& m, const std::string& where) const {
    if (!m.is_object()) bad(where, "must be an object with 'role' and 'content'");
    if (!m.contains("role")) bad(where, "has no 'role'");
    long n = rules_.per_message;
    for (const auto& [key, value] : m.items()) {
      n += field(value, where + "." + key);
      if (key == "name") n += rules_.per_name;
    }
    return n;
  }

  long tools(const json& tools, const std::string& where) const {
    if (!tools.is_array()) bad(where, "must be an array");
    if (tools.empty()) return 0;
    long n = 0;
    for (std::size_t i = 0; i < tools.size(); ++i) {
      const std::string at = where + "[" + std::to_string(i) + "]";
      const json& t = tools[i];
      // "tools" entries wrap the definition in {"type": "function", "function": {...}}; legacy
      // "functions" entries are the definition itself.
      const json& f = t.contains("function") ? t["function"] : t;
      if (!f.is_object() || !f.contains("name") || !f["name"].is_string()) {
        bad(at, "must define a function with a string 'name'");
      }
      n += rules_.func_init;
      n += text(f["name"].get<std::string>() + ":" + trim_period(string_or_empty(f, "description")));
      const json* props = nullptr;
      if (f.contains("parameters") && f["parameters"].is_object() &&
          f["parameters"].contains("properties") && f["parameters"]["properties"].is_object()) {
        props = &f["parameters"]["properties"];
      }
      if (props == nullptr || props->empty()) continue;
      n += rules_.prop_init;
      for (const auto& [key, p] : props->items()) {
        n += rules_.prop_key;
        if (p.is_object() && p.contains("enum") && p["enum"].is_array()) {
          n += rules_.enum_init;
          for (const json& item : p["enum"]) {
            n += rules_.enum_item + text(item.is_string() ? item.get<std::string>() : item.dump());
          }
        }
        std::string type = p.is_object() && p.contains("type") ? scalar(p["type"]) : "";
        n += text(key + ":" + type + ":" + trim_period(string_or_empty(p, "description")));
      }
    }
    return n + rules_.func_end;
  }

 private:
  // A message field: strings are counted as text; content-part arrays by their parts; tool calls by
  // their function name and arguments; anything else by its compact JSON.
  long field(const json& v, const std::string& where) const {
    if (v.is_null()) return 0;
    if (v.is_string()) return text(v.get<std::string>());
    if (v.is_array()) {
      long n = 0;
      for (std::size_t i = 0; i < v.size(); ++i) n += part(v[i], where + "[" + std::to_string(i) + "]");
      return n;
    }
    return text(v.dump());
  }

  long part(const json& p, const std::string& where) const {
    if (p.is_string()) return text(p.get<std::string>());
    if (!p.is_object()) bad(where, "must be a string or an object");
    if (p.contains("text") && p["text"].is_string()) return text(p["text"].get<std::string>());
    if (p.contains("image_url")) {
      const json& img = p["image_url"];
      bool low = img.is_object() && img.value("detail", "") == "low";
      return static_cast<long>(low ? kImageTokensLow : kImageTokensDefault);
    }
    if (p.contains("function") && p["function"].is_object()) {  // a tool call
      const json& f = p["function"];
      return text(string_or_empty(f, "name")) + text(string_or_empty(f, "arguments"));
    }
    return text(p.dump());
  }

  static std::string scalar(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }
  static std::string string_or_empty(const json& obj, const char* key) {
    if (!obj.is_object() || !obj.contains(key) || obj[key].is_null()) return {};
    return scalar(obj[key]);
  }
  static std::string trim_period(std::string s) {
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  }

  const Encoding& enc_;
  Rules rules_;
};

}  // namespace

std::size_t count_chat_tokens(const Encoding& encoding, std::string_view request_json,
                              std::string_view model) {
  json request = json::parse(request_json.begin(), request_json.end(), nullptr, false);
  if (request.is_discarded()) bad("body", "is not valid JSON");
  const json* messages = &request;
  if (request.is_object()) {
    if (!request.contains("messages")) bad("body", "has no 'messages' array");
    messages = &request["messages"];
  }
  if (!messages->is_array()) bad("messages", "must be an array of message objects");

  const Rules rules = rules_for(encoding, model);
  Counter counter(encoding, rules);
  long n = rules.reply_priming;
  for (std::size_t i = 0; i < messages->size(); ++i) {
    n += counter.message((*messages)[i], "messages[" + std::to_string(i) + "]");
  }
  if (request.is_object()) {
    for (const char* key : {"tools", "functions"}) {
      if (request.contains(key) && !request[key].is_null()) n += counter.tools(request[key], key);
    }
  }
  return static_cast<std::size_t>(n < 0 ? 0 : n);
}

std::size_t count_chat_tools(const Encoding& encoding, std::string_view tools_json, std::string_view model) {
  json tools = json::parse(tools_json.begin(), tools_json.end(), nullptr, false);
  if (tools.is_discarded()) bad("tools", "is not valid JSON");
  const long n = Counter(encoding, rules_for(encoding, model)).tools(tools, "tools");
  return static_cast<std::size_t>(n < 0 ? 0 : n);
}

ChatFraming chat_framing(const Encoding& encoding, std::string_view model) {
  const Rules r = rules_for(encoding, model);
  return {r.per_message, r.per_name, r.reply_priming};
}

}  // namespace tokenlane
