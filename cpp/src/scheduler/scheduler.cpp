// The scheduler state machine. Layout (all under one mutex):
//  - request records live in a slab (vector + free list), found by id through a flat hash table of
//    slots (id_table.hpp);
//  - each tenant keeps its queued requests in a bucket queue by the policy key (bucket_queue.hpp:
//    exact order at the front, unsorted appends behind), so a tenant's head is its best request;
//    tenants are ordered in `tenant_order` by a tenant key (the head's key, or the VTC counter for
//    the fair orders), so picking the next request is O(log n) and a tenant blocked by its own
//    limits is skipped without scanning its requests;
//  - `index` holds every queued request in the global key order for O(log n) queue positions; while
//    one tenant holds every queued request, it is that tenant's queue too (Impl::solo_of);
//  - the deferred lane is one ordered set.
// The ordered sets are counted B+trees with pooled nodes (ordered_index.hpp), and bucket key vectors
// are reused, so a warm scheduler allocates little per request beyond the strings its API returns.
// Policy keys are static per request (aging is linear in arrival time, and slack ordering only
// needs deadline − predicted service), so no key changes while a request waits.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "bucket_queue.hpp"
#include "id_table.hpp"
#include "ordered_index.hpp"
#include "tokenlane/error.hpp"
#include "tokenlane/scheduler.hpp"

namespace tokenlane {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

// Fields ordered for size (24 bytes; the order compares cls first).
struct Key {
  double k = 0;
  std::uint64_t seq = 0;
  std::uint32_t slot = 0;  // payload, not part of the order (seq is unique)
  int cls = 0;
  bool operator<(const Key& o) const {
    if (cls != o.cls) return cls < o.cls;
    if (k != o.k) return k < o.k;
    return seq < o.seq;
  }
};

// A tenant queue's buckets (bucket_queue.hpp): class, then whole seconds of the key (monotone in the
// order of Key).
struct KeyBucket {
  std::pair<int, double> operator()(const Key& k) const { return {k.cls, std::floor(k.k * 0.125)}; }
};

struct TenantKey {
  double a = 0, b = 0;
  std::uint64_t seq = 0;
  std::uint32_t tenant = 0;
  int cls = 0;
  bool operator<(const TenantKey& o) const {
    if (cls != o.cls) return cls < o.cls;
    if (a != o.a) return a < o.a;
    if (b != o.b) return b < o.b;
    return seq < o.seq;
  }
};

// Tokens per minute as a bucket of capacity `per_minute` refilled continuously. The level may go
// negative when actual usage exceeds what was charged (debt is repaid by refill).
struct Bucket {
  bool on = false;
  double capacity = 0, rate = 0, level = 0, last = std::numeric_limits<double>::quiet_NaN();
  void init(double per_minute) {
    on = true;
    capacity = per_minute;
    rate = per_minute / 60.0;
    level = capacity;
  }
  void refill(double now) {
    if (!on) return;
    if (std::isnan(last)) {
      last = now;
    } else if (now > last) {
      level = std::min(capacity, level + (now - last) * rate);
      last = now;
    }
  }
  bool has(double amount) const { return !on || level >= amount; }
  double wait_for(double amount) const { return !on || level >= amount ? 0.0 : (amount - level) / rate; }
  void give_back(double amount) {
    if (on) level = std::min(capacity, level + amount);
  }
};

struct Budget {
  Money limit;
  BudgetWindow window = BudgetWindow::day;
  Money spent;
  double start = std::numeric_limits<double>::quiet_NaN();
};

// Where a queued request's entry for the combined policy's urgency check is (see Impl::urgent).
enum class UrgentAt : std::uint8_t { none, near, far };

// A request's record. What picking and starting read comes first; the rest of the submitted request
// is kept only as far as something reads it (id, model; the tenant's name is in its Tenant), four
// lines in all, since copying and clearing all of it per request was a tenth of cost_priority's
// cycle. A request reaching the head of its tenant's queue or of the urgency set (its record long
// cold) has all four prefetched: unqueue and start read line 3 too (urgent_k, id_hash, vtc_charged).
struct alignas(64) Rec {
  // line 0
  Key key;
  RequestState state = RequestState::queued;
  bool live = false;
  bool in_queue = false;
  bool budget_deferred = false;
  bool promoted = false;  // a batch request moved from the lane to the queue (batch_max_defer_s)
  UrgentAt urgent_at = UrgentAt::none;
  Priority priority = Priority::standard;
  std::uint32_t tenant = 0;
  std::uint32_t run_pos = 0;  // index in Impl::running while running
  std::uint64_t input_tokens = 0, est_output_p50 = 0;
  Money cost_p90;
  // line 1
  std::optional<double> deadline_s;
  Money cost_p50;
  double submitted_at = 0, started_at = 0, pred_service = 0;
  Money reserved;
  double tokens_charged = 0;
  // line 2 (id first: pop_ready returns it)
  std::string id;     // a freed record keeps its old id (and buffer) until the slot is reused
  std::string model;
  // line 3
  double vtc_charged = 0;
  double laned_at = 0;    // when it entered the deferred lane
  double urgent_k = 0;    // combined: its key in Impl::urgent (latest start time)
  double* tpot = nullptr;  // its model's entry in Impl::tpot_by_model, if it had one at submit
  std::uint32_t id_hash = 0;  // IdTable::hash(req.id), so freeing the record does not hash it again
};

struct Tenant {
  std::string name;
  double weight = 1.0, counter = 0.0;
  double mean_output = std::numeric_limits<double>::quiet_NaN();  // EMA of its actual output tokens
  detail::BucketQueue<Key, KeyBucket> queue;  // its queued requests, in policy order
  std::uint32_t running = 0;
  std::uint64_t deferred = 0;
  Money reserved, spent_all;
  std::optional<Budget> budget;
  Bucket rpm, tpm;
  bool indexed = false;
  TenantKey tkey;
  bool alive = true;           // false: a forgotten record's slot, free for reuse
  std::uint64_t idle_mark = 0;  // its entry in Impl::idle_tenants while listed as idle (0: none)
  double idle_since = 0;
};

enum class Block { none, paused, concurrency, tenant_concurrency, rpm, tpm, budget_reserved, budget_spent };

std::string fmt_s(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", s);
  return buf;
}

}  // namespace

struct Scheduler::Impl {
  SchedulerConfig cfg;
  mutable std::mutex mu;
  bool paused = false;

  std::vector<Rec> recs;
  std::vector<std::uint32_t> free_slots;
  detail::IdTable ids;  // live ids → slots
  // The running requests again: complete() finds its request in a table the size of the running set
  // (cache-resident) instead of a probe into the one of every live request, a cache miss per call
  // with 100k queued (free_rec's erase there is prefetched before finish()).
  detail::IdTable running_ids;
  std::vector<Tenant> tenants;  // records of live tenants and free slots (alive false)
  std::unordered_map<std::string, std::uint32_t> tenant_ids;  // live tenants
  std::vector<std::uint32_t> free_tenants;
  std::deque<std::pair<std::uint32_t, std::uint64_t>> idle_tenants;  // (tenant, idle_mark), oldest first
  std::uint64_t idle_clock = 0;
  double last_now = 0;  // the latest clock submit saw (for records created by calls without one)

  detail::OrderedIndex<TenantKey> tenant_order;
  detail::OrderedIndex<Key> index;
  detail::OrderedIndex<Key> deferred;
  // Capacity-deferred requests by (entered the lane, seq, slot), for promotion after batch_max_defer_s.
  detail::OrderedIndex<std::tuple<double, std::uint64_t, std::uint32_t>> lane_age;
  std::deque<std::pair<std::uint64_t, std::uint32_t>> wait_fifo;  // (seq, slot) for max_wait
  std::vector<std::uint32_t> running;  // slots, unordered (Rec::run_pos is each one's index)
  std::vector<std::uint32_t> scratch;
  std::uint32_t solo = kNone;  // the one tenant with queued requests whose queue is `index` (see solo_of)
  bool any_budget = false;
  // combined: the queued requests by latest start time (deadline − predicted service), to let
  // requests about to miss their deadline go first; hopeless ones (past it) leave it for good.
  // Only entries within urgency_s of now can matter, so `urgent` holds those (every entry whose
  // 1 s bucket of latest start time is <= urgent_horizon) and the rest wait unordered in
  // `urgent_far` by bucket, moved over as the clock reaches them. A far entry of a request that
  // left the queue is dropped when its bucket moves (it no longer matches a queued request).
  detail::OrderedIndex<Key> urgent;
  detail::Buckets<double, Key> urgent_far;
  double urgent_horizon = -kInf;
  std::vector<std::string> ready_outbox;
  std::vector<std::pair<std::string, Decision>> rejected_outbox;

  Bucket rpm, tpm;
  Money reserved_total;
  std::uint64_t seq = 0;
  double cost_sum = 0;
  std::uint64_t cost_n = 0;
  double mean_service = std::numeric_limits<double>::quiet_NaN();
  double queued_work = 0;  // predicted service seconds of the queued requests
  // Learned seconds per output token by model (node-based: records keep pointers to the values).
  std::unordered_map<std::string, double> tpot_by_model;

  // counters
  std::uint64_t n_submitted = 0, n_admitted = 0, n_queued = 0, n_deferred = 0, n_rejected = 0,
                n_started = 0, n_completed = 0, n_cancelled = 0, n_shed = 0, n_dispatched = 0;

  explicit Impl(SchedulerConfig c) : cfg(std::move(c)) {
    if (cfg.rpm) rpm.init(*cfg.rpm);
    if (cfg.tpm) tpm.init(*cfg.tpm);
  }

  // The id of a slot, for the id table's comparisons.
  struct IdOf {
    const Impl* m;
    const std::string& operator()(std::uint32_t slot) const { return m->recs[slot].id; }
  };
  IdOf id_of() const { return IdOf{this}; }

  bool fair_order() const { return cfg.policy == Policy::fair || cfg.policy == Policy::combined; }
  bool uses_lane() const { return cfg.policy != Policy::fifo; }

  Tenant& tenant_of(const std::string& name) { return tenant_of(name, tenant_ids.find(name)); }
  // `it`: tenant_ids.find(name).
  Tenant& tenant_of(const std::string& name, std::unordered_map<std::string, std::uint32_t>::iterator it) {
    if (it != tenant_ids.end()) return tenants[it->second];
    std::uint32_t idx;
    if (!free_tenants.empty()) {
      idx = free_tenants.back();
      free_tenants.pop_back();
      tenants[idx] = Tenant();
    } else {
      idx = static_cast<std::uint32_t>(tenants.size());
      tenants.emplace_back();
    }
    tenant_ids.emplace(name, idx);
    Tenant& t = tenants[idx];
    t.name = name;
    if (cfg.tenant_rpm) t.rpm.init(*cfg.tenant_rpm);
    if (cfg.tenant_tpm) t.tpm.init(*cfg.tenant_tpm);
    return t;
  }
  std::uint32_t tenant_idx(const Tenant& t) const { return static_cast<std::uint32_t>(&t - tenants.data()); }

  // ---- one backlogged tenant ---------------------------------------------------------------------
  // While every queued request belongs to one tenant (`solo`), that tenant's queue would hold
  // exactly the keys of `index`, in the same order: its own set is left empty and `index` stands in
  // for it, so an enqueue and a start each touch one ordered set instead of two. The tenant becomes
  // solo when it enqueues into an empty queue; when another tenant enqueues, its set is filled from
  // `index` (in order, keys only appended) and sharing stops until the queue is empty again. That
  // copy moves at most the keys enqueued since the queue was last empty: O(1) amortized per enqueue.
  bool solo_of(const Tenant& t) const { return solo != kNone && &tenants[solo] == &t; }
  bool queue_empty(const Tenant& t) const { return solo_of(t) ? index.empty() : t.queue.empty(); }
  std::size_t queue_size(const Tenant& t) const { return solo_of(t) ? index.size() : t.queue.size(); }
  void end_solo() {
    if (solo == kNone) return;
    Tenant& t = tenants[solo];
    solo = kNone;
    for (const Key& k : index) t.queue.insert(k);
  }

  // ---- forgetting idle tenants ---------------------------------------------------------------------
  // A service that accepts unknown API keys sees tenant names without end; a record is kept only
  // while it holds something a new record would not: work (queued, deferred, running), a budget,
  // a weight, a rate bucket still refilling. Past that, what remains is the VTC counter and the
  // output average, which a returning tenant gets anew (docs/scheduling.md, "Forgetting idle
  // tenants"). Idle records are forgotten after tenant_idle_forget_s, or sooner, least recently
  // active first, while more than max_tenant_records exist.

  bool idle(const Tenant& t) const { return queue_empty(t) && t.deferred == 0 && t.running == 0; }
  static bool bucket_full(const Bucket& b, double now) {
    if (!b.on || std::isnan(b.last) || b.level >= b.capacity) return true;
    return now > b.last && b.level + (now - b.last) * b.rate >= b.capacity;
  }
  // What a newly created record would hold, apart from the counter and output average.
  bool forgettable(const Tenant& t, double now) const {
    return idle(t) && !t.budget && t.weight == 1.0 && t.reserved.pico() == 0 && bucket_full(t.rpm, now) &&
           bucket_full(t.tpm, now);
  }

  // Called after an operation that may have left `t` idle: lists it (least recently active first).
  // Then forgets what is due.
  void note_idle(Tenant& t, double now) {
    if (!t.idle_mark && idle(t) && !t.budget && t.weight == 1.0) {
      t.idle_mark = ++idle_clock;
      t.idle_since = now;
      idle_tenants.emplace_back(tenant_idx(t), t.idle_mark);
    }
    if (!idle_tenants.empty()) forget_idle(now);
  }
  // Called when `t` gets work: its idle entry (if any) goes stale.
  static void note_active(Tenant& t) { t.idle_mark = 0; }

  void forget_idle(double now) {
    // Bounded work per call; stale entries (the tenant got work, or was forgotten) are skipped.
    for (int budget = 8; budget > 0 && !idle_tenants.empty(); --budget) {
      const auto [ti, mark] = idle_tenants.front();
      Tenant& t = tenants[ti];
      if (!t.alive || t.idle_mark != mark) {
        idle_tenants.pop_front();
        continue;
      }
      const bool crowded = tenant_ids.size() > cfg.max_tenant_records;
      if (!crowded && !(now - t.idle_since >= cfg.tenant_idle_forget_s)) break;
      idle_tenants.pop_front();
      if (forgettable(t, now)) {
        forget(ti);
      } else if (!idle(t) || t.budget || t.weight != 1.0) {
        t.idle_mark = 0;  // listed again at its next idle moment, if it is forgettable then
      } else {  // a bucket still refilling (or the clock went back): try again later
        t.idle_mark = ++idle_clock;
        idle_tenants.emplace_back(ti, t.idle_mark);
      }
    }
    if (idle_tenants.size() > 2 * tenant_ids.size() + 64) {  // drop stale entries now and then
      std::deque<std::pair<std::uint32_t, std::uint64_t>> live;
      for (const auto& e : idle_tenants)
        if (tenants[e.first].alive && tenants[e.first].idle_mark == e.second) live.push_back(e);
      idle_tenants.swap(live);
    }
  }

  void forget(std::uint32_t ti) {
    tenant_ids.erase(tenants[ti].name);
    tenants[ti] = Tenant();  // releases its name and queue nodes
    tenants[ti].alive = false;
    free_tenants.push_back(ti);
  }

  void roll(Budget& b, double now) {
    const double start = budget_window_bounds(b.window, now).first;
    if (std::isnan(b.start)) {
      b.start = start;
    } else if (start > b.start) {
      b.start = start;
      b.spent = Money();
    }
  }
  std::optional<double> resets_in(const Tenant& t, double now) const {
    if (!t.budget || t.budget->window == BudgetWindow::total) return std::nullopt;
    return std::max(0.0, budget_window_bounds(t.budget->window, now).second - now);
  }

  double* learned_tpot(const std::string& model) {
    auto it = tpot_by_model.find(model);
    return it == tpot_by_model.end() ? nullptr : &it->second;
  }
  double predict_service(const ScheduledRequest& r, const double* tpot) const {
    return cfg.ttft_s + (tpot ? *tpot : cfg.tpot_s) * static_cast<double>(r.est_output_p50);
  }
  double effective_deadline(const Rec& r) const {
    if (r.deadline_s) return *r.deadline_s;
    return r.submitted_at + cfg.class_slo_s[static_cast<int>(r.priority)];
  }
  static double tokens_of(const Rec& r) {
    return static_cast<double>(r.input_tokens) + static_cast<double>(r.est_output_p50);
  }
  static double tokens_of(const ScheduledRequest& r) {
    return static_cast<double>(r.input_tokens) + static_cast<double>(r.est_output_p50);
  }

  // combined: the latest key shortest-first may give a request, arrival + (1 + tail_share) × the
  // wait FIFO would give it: the queued requests and itself (a slot must free up first) × the
  // observed mean service time over the slots (the predicted service of the queue, inflated by
  // noisy estimates, stands in until a request has completed). Computed once, as it enters.
  double tail_bound(const Rec& r) const {
    if (!std::isfinite(cfg.tail_share)) return kInf;
    const double conc = static_cast<double>(std::max<std::uint32_t>(1, cfg.max_concurrency.value_or(1)));
    const double wait = std::isnan(mean_service) ? (queued_work + r.pred_service) / conc
                                                 : static_cast<double>(index.size() + 1) * mean_service / conc;
    return r.submitted_at + (1.0 + cfg.tail_share) * wait;
  }

  Key make_key(const Rec& r, std::uint32_t slot) const {
    Key key;
    key.seq = r.key.seq;
    key.slot = slot;
    const double t0 = r.submitted_at;
    switch (cfg.policy) {
      case Policy::fifo:
      case Policy::fair:
        key.k = t0;
        break;
      case Policy::cost_priority: {
        const double ref = cost_n ? cost_sum / static_cast<double>(cost_n) : 0.0;
        const double rel = ref > 0 ? static_cast<double>(r.cost_p50.pico()) / ref : 0.0;
        key.k = t0 + cfg.cost_aging_s * rel;
        break;
      }
      case Policy::deadline:
        key.k = effective_deadline(r) - r.pred_service;
        break;
      case Policy::combined:
        key.cls = static_cast<int>(r.priority);
        key.k = std::min({t0 + cfg.sjf_aging * r.pred_service, effective_deadline(r) - r.pred_service, tail_bound(r)});
        break;
    }
    if (r.promoted) {  // waited its time in the lane: a standard request that arrived at t0
      key.cls = std::min(key.cls, static_cast<int>(Priority::standard));
      key.k = t0;
    }
    return key;
  }

  // Lines 0-1 of a record are what picking and starting read, line 2 its id.
  static_assert(offsetof(Rec, id) == 128 && sizeof(Rec) <= 256, "keep Rec's hot fields in its first two cache lines, and it in four");
  void prefetch_rec(std::uint32_t slot, std::size_t bytes = sizeof(Rec)) const {
    const char* p = reinterpret_cast<const char*>(&recs[slot]);
    for (std::size_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off);
  }

  // The best queued request of a tenant with a non-empty queue.
  const Key* head_of(const Tenant& t) const { return solo_of(t) ? &index.front() : &t.queue.front(); }
  static Key urgent_key(const Rec& r) {
    Key u;
    u.k = r.urgent_k;
    u.seq = r.key.seq;
    u.slot = r.key.slot;
    return u;
  }

  // ---- urgency (combined) -------------------------------------------------------------------------

  static double urgent_bucket(double k) { return std::floor(k); }

  void add_urgent(Rec& r) {
    if (r.urgent_at == UrgentAt::far) return;  // its entry (the same key) is still waiting there
    r.urgent_k = effective_deadline(r) - r.pred_service;
    const double b = urgent_bucket(r.urgent_k);
    if (b <= urgent_horizon) {
      urgent.insert(urgent_key(r));
      r.urgent_at = UrgentAt::near;
    } else {
      urgent_far.at(b).keys.push_back(urgent_key(r));
      r.urgent_at = UrgentAt::far;
    }
  }

  // Moves the far entries that may be within urgency_s of `now` into `urgent`.
  void advance_urgent(double now) {
    const double horizon = urgent_bucket(now + cfg.urgency_s);
    if (horizon <= urgent_horizon) return;
    urgent_horizon = horizon;
    while (!urgent_far.empty() && urgent_far.front().id <= horizon) {
      const std::vector<Key>& bucket = urgent_far.front().keys;
      for (std::size_t i = 0; i < bucket.size(); ++i) {
        if (i + 16 < bucket.size()) prefetch_rec(bucket[i + 16].slot, 64);  // records are cold by now
        const Key& u = bucket[i];
        Rec& r = recs[u.slot];
        if (!r.live || r.key.seq != u.seq || r.urgent_at != UrgentAt::far) continue;  // another request's
        if (r.in_queue) {
          urgent.insert(u);
          r.urgent_at = UrgentAt::near;
        } else {
          r.urgent_at = UrgentAt::none;
        }
      }
      urgent_far.pop_front();
    }
  }

  void clear_urgent() {
    urgent.clear();
    urgent_far.clear();
    urgent_horizon = -kInf;
    for (Rec& r : recs) r.urgent_at = UrgentAt::none;
  }

  // ---- tenant ordering -------------------------------------------------------------------------

  // Places a tenant in tenant_order by its current head (and counter); out of it when its queue is
  // empty. An entry whose key did not change stays where it is.
  void reindex(Tenant& t) {
    const std::uint32_t ti = tenant_idx(t);
    const bool fair = fair_order();
    if (queue_empty(t)) {
      if (t.indexed) {
        tenant_order.erase(t.tkey);
        t.indexed = false;
      }
      return;
    }
    const Key& head = *head_of(t);
    prefetch_rec(head.slot);  // pick() and start read it next (queued long ago: likely cold)
    TenantKey k;
    k.tenant = ti;
    k.seq = head.seq;
    k.cls = head.cls;
    if (fair) {
      k.a = t.counter;
      k.b = head.k;
    } else {
      k.a = head.k;
    }
    if (t.indexed) {
      if (k.cls == t.tkey.cls && k.a == t.tkey.a && k.b == t.tkey.b && k.seq == t.tkey.seq) return;
      tenant_order.replace(t.tkey, k);
    } else {
      tenant_order.insert(k);
    }
    t.tkey = k;
    t.indexed = true;
  }

  // The least VTC counter among tenants with queued requests (fair orders; tenant_order not empty).
  // tenant_order sorts by (class, counter, ...): the least is the first entry of one of the classes.
  double least_counter() const {
    double least = kInf;
    for (int cls = 0; cls <= static_cast<int>(Priority::batch); ++cls) {
      TenantKey first;
      first.cls = cls;
      first.a = -kInf;
      first.b = -kInf;
      const auto it = tenant_order.lower_bound(first);
      if (it != tenant_order.end() && it->cls == cls) least = std::min(least, it->a);
    }
    return least;
  }

  // ---- queue membership --------------------------------------------------------------------------

  // Returns the request's position in the queue (requests ahead of it in the policy order).
  std::size_t enqueue(std::uint32_t slot, bool lift = true) {
    Rec& r = recs[slot];
    Tenant& t = tenants[r.tenant];
    r.state = RequestState::queued;
    r.key = make_key(r, slot);
    if (index.empty()) solo = r.tenant;  // (every tenant's own set is empty)
    else if (solo != r.tenant) end_solo();
    if (lift && queue_empty(t) && fair_order() && !tenant_order.empty()) {
      // VTC's lift: a tenant returning from idle starts at the least counter of the backlogged
      // tenants, so idle time is not banked as credit.
      t.counter = std::max(t.counter, least_counter());
    }
    const bool new_head = queue_empty(t) || r.key < *head_of(t);
    r.in_queue = true;
    queued_work += r.pred_service;
    if (solo != r.tenant) t.queue.insert(r.key);
    const std::size_t position = index.insert_ranked(r.key);
    if (new_head) reindex(t);
    if (cfg.max_wait_s) wait_fifo.emplace_back(r.key.seq, slot);
    if (cfg.policy == Policy::combined) add_urgent(r);
    return position;
  }

  // Returns whether it was its tenant's head; `reindex_tenant` false: the caller reindexes it.
  bool unqueue(std::uint32_t slot, bool reindex_tenant = true) {
    Rec& r = recs[slot];
    Tenant& t = tenants[r.tenant];
    const bool was_head = head_of(t)->seq == r.key.seq;
    r.in_queue = false;
    queued_work = index.size() > 1 ? std::max(0.0, queued_work - r.pred_service) : 0.0;
    if (solo != r.tenant) {
      // (a key erased from a far bucket is dropped when the bucket is sorted in: the ones still queued)
      t.queue.erase(r.key, [this](const Key& k) {
        const Rec& q = recs[k.slot];
        return q.live && q.in_queue && !(q.key < k) && !(k < q.key);
      });
    }
    index.erase(r.key);
    if (index.empty()) solo = kNone;
    if (r.urgent_at == UrgentAt::near) {
      urgent.erase(urgent_key(r));
      r.urgent_at = UrgentAt::none;
      // The next urgent request is the first thing the next pick() reads: its record is cold.
      if (!urgent.empty()) prefetch_rec(urgent.front().slot);
    }  // a far entry stays (stale unless it is queued again) until its bucket moves
    if (was_head && reindex_tenant) reindex(t);
    return was_head;
  }

  // `now`: when it enters the lane (NaN: it is being re-keyed and keeps its time).
  void to_lane(std::uint32_t slot, bool budget_deferred, double now) {
    Rec& r = recs[slot];
    r.state = RequestState::deferred;
    r.budget_deferred = budget_deferred;
    r.promoted = false;
    if (!std::isnan(now)) r.laned_at = now;
    r.key = make_key(r, slot);
    r.key.cls = 0;
    deferred.insert(r.key);
    tenants[r.tenant].deferred++;
    if (!budget_deferred && std::isfinite(cfg.batch_max_defer_s)) lane_age.insert({r.laned_at, r.key.seq, slot});
  }

  void unlane(std::uint32_t slot) {
    Rec& r = recs[slot];
    deferred.erase(r.key);
    lane_age.erase({r.laned_at, r.key.seq, slot});
    tenants[r.tenant].deferred--;
  }

  // Moves capacity-deferred requests that waited batch_max_defer_s into the queue (see the option).
  void promote(double now) {
    while (!lane_age.empty()) {
      const auto [laned, seq, slot] = lane_age.front();
      if (laned + cfg.batch_max_defer_s > now) break;
      unlane(slot);
      recs[slot].promoted = true;
      enqueue(slot);
    }
  }

  void free_rec(std::uint32_t slot) {
    Rec& r = recs[slot];
    ids.erase(r.id_hash, slot);
    r.live = false;
    r.in_queue = false;
    r.state = RequestState::queued;
    free_slots.push_back(slot);
  }

  // ---- limits ----------------------------------------------------------------------------------

  void refill(Tenant& t, double now) {
    rpm.refill(now);
    tpm.refill(now);
    t.rpm.refill(now);
    t.tpm.refill(now);
    if (t.budget) roll(*t.budget, now);
  }

  // Why `r` cannot start now (Block::none if it can). `lane` applies the deferred lane's budget
  // headroom; `ignore_pause` is for admin dispatch.
  Block blocked(const Rec& r, Tenant& t, double now, bool lane, bool ignore_pause) {
    refill(t, now);
    if (paused && !ignore_pause) return Block::paused;
    if (cfg.max_concurrency && running.size() >= *cfg.max_concurrency) return Block::concurrency;
    if (cfg.tenant_max_concurrency && t.running >= *cfg.tenant_max_concurrency) return Block::tenant_concurrency;
    if (!rpm.has(1.0) || !t.rpm.has(1.0)) return Block::rpm;
    const double tokens = tokens_of(r);
    if (!tpm.has(tokens) || !t.tpm.has(tokens)) return Block::tpm;
    if (t.budget) {
      const Budget& b = *t.budget;
      const Money p90 = r.cost_p90;
      if (b.spent.pico() > b.limit.pico() - p90.pico()) return Block::budget_spent;
      Money cap = b.limit;
      if (lane && r.priority == Priority::batch) {
        cap = Money::from_pico(static_cast<std::int64_t>(
            std::floor(static_cast<double>(b.limit.pico()) * cfg.budget_defer_fraction)));
      }
      if (b.spent.pico() + t.reserved.pico() > cap.pico() - p90.pico()) return Block::budget_reserved;
    }
    return Block::none;
  }

  double rate_wait(const Rec& r, const Tenant& t) const {
    const double tokens = tokens_of(r);
    return std::max({rpm.wait_for(1.0), t.rpm.wait_for(1.0), tpm.wait_for(tokens), t.tpm.wait_for(tokens)});
  }

  void start(std::uint32_t slot, double now) {
    Rec& r = recs[slot];
    Tenant& t = tenants[r.tenant];
    bool reindex_tenant = false;  // once, below, after the counter moved
    if (r.in_queue) reindex_tenant = unqueue(slot, false);
    else if (r.state == RequestState::deferred) unlane(slot);
    r.state = RequestState::running;
    r.started_at = now;
    const double tokens = tokens_of(r);
    rpm.level -= rpm.on ? 1.0 : 0.0;
    t.rpm.level -= t.rpm.on ? 1.0 : 0.0;
    if (tpm.on) tpm.level -= tokens;
    if (t.tpm.on) t.tpm.level -= tokens;
    r.tokens_charged = tokens;
    r.reserved = r.cost_p90;
    t.reserved += r.reserved;
    reserved_total += r.reserved;
    // The counter is charged the tenant's typical output while the request runs and corrected to
    // the actual tokens at completion (VTC counts tokens as they are decoded; we see them only at
    // the end). A per-request estimate would be noisier: one over-estimate would hold a tenant
    // back, one under-estimate would let it take many slots at once.
    const double out = std::isnan(t.mean_output) ? static_cast<double>(r.est_output_p50) : t.mean_output;
    r.vtc_charged = (cfg.vtc_input_weight * static_cast<double>(r.input_tokens) + cfg.vtc_output_weight * out) /
                    t.weight;
    t.counter += r.vtc_charged;
    if (reindex_tenant || (fair_order() && !queue_empty(t))) reindex(t);
    t.running++;
    r.run_pos = static_cast<std::uint32_t>(running.size());
    running.push_back(slot);
    running_ids.insert(r.id_hash, slot);
    n_started++;
  }

  // Releases what a running request holds; `actual` is set on completion.
  void finish(std::uint32_t slot, double now, const Money* actual, std::uint64_t in_tok, std::uint64_t out_tok) {
    Rec& r = recs[slot];
    Tenant& t = tenants[r.tenant];
    refill(t, now);
    t.reserved -= r.reserved;
    reserved_total -= r.reserved;
    double vtc_correction = -r.vtc_charged;
    double token_correction = r.tokens_charged;
    if (actual) {
      if (t.budget) t.budget->spent += *actual;
      t.spent_all += *actual;
      const double used = static_cast<double>(in_tok) + static_cast<double>(out_tok);
      token_correction = r.tokens_charged - used;
      vtc_correction = (cfg.vtc_input_weight * static_cast<double>(in_tok) +
                        cfg.vtc_output_weight * static_cast<double>(out_tok)) / t.weight - r.vtc_charged;
      learn(r, now, out_tok);
      const double o = static_cast<double>(out_tok);
      t.mean_output = std::isnan(t.mean_output) ? o : 0.9 * t.mean_output + 0.1 * o;
    }
    if (token_correction >= 0) {
      tpm.give_back(token_correction);
      t.tpm.give_back(token_correction);
    } else {
      if (tpm.on) tpm.level += token_correction;
      if (t.tpm.on) t.tpm.level += token_correction;
    }
    t.counter += vtc_correction;
    if (fair_order() && !queue_empty(t)) reindex(t);
    t.running--;
    const std::uint32_t moved = running.back();  // swap-remove
    running[r.run_pos] = moved;
    recs[moved].run_pos = r.run_pos;
    running.pop_back();
    running_ids.erase(r.id_hash, slot);
    note_idle(t, now);
  }

  void learn(const Rec& r, double now, std::uint64_t out_tok) {
    const double dur = now - r.started_at;
    if (!(dur >= 0) || !std::isfinite(dur)) return;
    mean_service = std::isnan(mean_service) ? dur : 0.95 * mean_service + 0.05 * dur;
    if (out_tok > 0) {
      const double obs = std::max(0.0, dur - cfg.ttft_s) / static_cast<double>(out_tok);
      double* tp = r.tpot ? r.tpot : learned_tpot(r.model);
      if (!tp) tpot_by_model.emplace(r.model, 0.8 * cfg.tpot_s + 0.2 * obs);
      else *tp = 0.9 * *tp + 0.1 * obs;
    }
  }

  // ---- picking -----------------------------------------------------------------------------------

  struct Pick {
    std::uint32_t slot = kNone;
    bool shed_due = false;  // dry mode: a head is due to be shed
  };

  bool expired(const Rec& r, double now) const {
    return cfg.shed_expired && r.deadline_s && now > *r.deadline_s;
  }

  void shed(std::uint32_t slot, double now, const char* reason, std::string message,
            std::optional<double> retry_after) {
    Rec& r = recs[slot];
    if (r.state == RequestState::queued) unqueue(slot);
    else unlane(slot);
    Decision d;
    d.kind = DecisionKind::reject;
    d.reason = reason;
    d.message = std::move(message);
    d.retry_after_s = retry_after;
    rejected_outbox.emplace_back(r.id, std::move(d));
    n_shed++;
    n_rejected++;
    Tenant& t = tenants[r.tenant];
    free_rec(slot);
    note_idle(t, now);
  }

  void shed_budget(std::uint32_t slot, double now) {
    const Tenant& t = tenants[recs[slot].tenant];
    auto retry = resets_in(t, now);
    shed(slot, now, "budget_exceeded",
         "The budget of tenant '" + t.name + "' cannot cover this request in the current window" +
             (retry ? "; retry after the window resets in " + fmt_s(*retry) + " s." : "."),
         retry);
  }

  // The next request to start: the best head of a tenant not blocked by its own limits, else (when
  // no tenant is blocked only by a global limit) the best eligible request in the deferred lane.
  // Expired and unaffordable heads were shed by shed_heads() before.
  Pick pick(double now, bool dry) {
    Pick p;
    if (paused) return p;
    if (cfg.max_concurrency && running.size() >= *cfg.max_concurrency) return p;
    rpm.refill(now);
    tpm.refill(now);
    if (!rpm.has(1.0)) return p;
    if (cfg.policy == Policy::combined) {
      // A request whose latest start time is within urgency_s goes first, across classes and
      // tenants, if it can still make its deadline; hopeless ones leave this heap (they keep their
      // place in the normal order).
      advance_urgent(now);
      while (!urgent.empty() && urgent.front().k < now) {
        recs[urgent.front().slot].urgent_at = UrgentAt::none;
        urgent.erase(Key(urgent.front()));
      }
      if (!urgent.empty() && urgent.front().k - now <= cfg.urgency_s) {
        const std::uint32_t slot = urgent.front().slot;
        Rec& r = recs[slot];
        Tenant& t = tenants[r.tenant];
        const Block b = blocked(r, t, now, false, false);
        if (b == Block::none) return Pick{slot, false};
        if (b == Block::tpm && !tpm.has(tokens_of(r))) return p;
      }
    }
    for (const TenantKey& tk : tenant_order) {
      Tenant& t = tenants[tk.tenant];
      const std::uint32_t slot = head_of(t)->slot;
      Rec& r = recs[slot];
      const Block b = blocked(r, t, now, false, false);
      if (b == Block::none) return Pick{slot, false};
      if (b == Block::tpm && !tpm.has(tokens_of(r))) return p;  // global: keep the order
    }
  lane:
    for (auto it = deferred.begin(); it != deferred.end(); ++it) {
      const std::uint32_t slot = it->slot;
      Rec& r = recs[slot];
      Tenant& t = tenants[r.tenant];
      const Block b = blocked(r, t, now, true, false);
      if (b == Block::none) return Pick{slot, false};
      if (b == Block::budget_spent && t.budget->window == BudgetWindow::total) {
        // A total budget never resets: waiting would be forever.
        if (dry) return Pick{kNone, true};
        shed_budget(slot, now);
        goto lane;
      }
      if (b == Block::tpm && !tpm.has(tokens_of(r))) return p;
    }
    return p;
  }

  // Sheds queue heads that can no longer succeed: deadline passed (when shed_expired) or budget
  // spent beyond what the request needs in this window. Runs even when no slot is free, so callers
  // learn at once.
  void shed_heads(double now) {
    if (tenant_order.empty() || (!cfg.shed_expired && !any_budget)) return;
    std::vector<std::uint32_t>& ts = scratch;
    ts.clear();
    for (const TenantKey& tk : tenant_order) ts.push_back(tk.tenant);
    for (std::uint32_t ti : ts) {
      Tenant& t = tenants[ti];
      if (t.budget) roll(*t.budget, now);
      while (!queue_empty(t)) {
        const std::uint32_t slot = head_of(t)->slot;
        const Rec& r = recs[slot];
        if (expired(r, now)) {
          shed(slot, now, "deadline", "The request's deadline passed while it waited in the queue.", std::nullopt);
        } else if (t.budget && t.budget->spent.pico() > t.budget->limit.pico() - r.cost_p90.pico()) {
          shed_budget(slot, now);
        } else {
          break;
        }
      }
    }
  }
  void shed_waiting(double now) {
    if (!cfg.max_wait_s) return;
    while (!wait_fifo.empty()) {
      const auto [s, slot] = wait_fifo.front();
      const Rec& r = recs[slot];
      if (!r.live || r.key.seq != s || r.state != RequestState::queued) {
        wait_fifo.pop_front();
        continue;
      }
      if (now - r.submitted_at <= *cfg.max_wait_s) break;
      wait_fifo.pop_front();
      const double retry = estimate_wait(0);
      shed(slot, now, "max_wait",
           "The request waited longer than the maximum queue wait of " + fmt_s(*cfg.max_wait_s) +
               " s; the service is saturated, retry later.",
           retry);
    }
  }

  // The first time at which shed_waiting sheds a request submitted at `at`: now − at > max_wait_s.
  // Not at + max_wait_s, which is where the wait *equals* the maximum (not shed yet), or rounded
  // either way on an epoch clock: a wake-up there would find nothing to do and ask again.
  double max_wait_due(double at) const {
    const double w = *cfg.max_wait_s;
    double t = at + w;
    while (!(t - at > w)) t = std::nextafter(t, kInf);
    for (double lower = std::nextafter(t, -kInf); lower - at > w; lower = std::nextafter(t, -kInf)) t = lower;
    return t;
  }

  // Estimated seconds until `ahead + 1` requests have started, from the mean observed service time.
  double estimate_wait(std::uint64_t ahead) const {
    const double service = std::isnan(mean_service) ? cfg.ttft_s + cfg.tpot_s * 256 : mean_service;
    double slots = cfg.max_concurrency ? static_cast<double>(*cfg.max_concurrency)
                                       : std::max<double>(1.0, static_cast<double>(running.size()));
    slots = std::max(1.0, slots);
    return (static_cast<double>(ahead) + 1.0) / slots * service;
  }

  Decision reject_now(const char* reason, std::string message, std::optional<double> retry) {
    Decision d;
    d.kind = DecisionKind::reject;
    d.reason = reason;
    d.message = std::move(message);
    d.retry_after_s = retry;
    n_rejected++;
    return d;
  }

  Decision blocked_reject(Block b, const Rec& r, const Tenant& t, double now) {
    switch (b) {
      case Block::rpm:
        return reject_now("rate_limit_rpm", "The requests-per-minute limit is reached; retry after the bucket refills.",
                          rate_wait(r, t));
      case Block::tpm:
        return reject_now("rate_limit_tpm", "The tokens-per-minute limit is reached; retry after the bucket refills.",
                          rate_wait(r, t));
      case Block::budget_reserved:
        return reject_now("budget_exceeded",
                          "Requests in flight have reserved the rest of tenant '" + t.name +
                              "''s budget; retry when they finish.",
                          estimate_wait(0));
      case Block::budget_spent:
        return reject_now("budget_exceeded", "The budget of tenant '" + t.name + "' is spent.", resets_in(t, now));
      case Block::paused:
        return reject_now("paused", "The scheduler is paused by an administrator and does not queue.", std::nullopt);
      default:
        return reject_now("concurrency", "Too many requests are in flight; retry when one finishes.",
                          estimate_wait(0));
    }
  }

  std::uint32_t new_slot() {
    if (!free_slots.empty()) {
      const std::uint32_t s = free_slots.back();
      free_slots.pop_back();
      return s;
    }
    recs.emplace_back();
    return static_cast<std::uint32_t>(recs.size() - 1);
  }

  Decision submit(const ScheduledRequest& req, double now) {
    const std::uint32_t id_hash = detail::IdTable::hash(req.id);
    // The id table's line is cold: fetch it while the tenant is looked up (which creates nothing).
    ids.prefetch(id_hash);
    const auto tenant_it = tenant_ids.find(req.tenant);
    if (ids.find(id_hash, req.id, id_of()) != kNone)
      throw Error(ErrorCode::invalid_argument, "request id '" + req.id + "' is already queued or running");
    n_submitted++;
    last_now = std::max(last_now, now);
    Tenant& t = tenant_of(req.tenant, tenant_it);
    note_active(t);
    Decision d = decide(req, t, id_hash, now);
    note_idle(t, now);  // refused: a new tenant's record may be left with nothing
    return d;
  }

  Decision decide(const ScheduledRequest& req, Tenant& t, std::uint32_t id_hash, double now) {
    refill(t, now);
    const double tokens = tokens_of(req);
    if ((tpm.on && tokens > tpm.capacity) || (t.tpm.on && tokens > t.tpm.capacity)) {
      return reject_now("too_large",
                        "The request's " + std::to_string(static_cast<std::uint64_t>(tokens)) +
                            " estimated tokens exceed the tokens-per-minute limit; it can never run. Shorten it.",
                        std::nullopt);
    }
    const bool batch_lane = uses_lane() && req.priority == Priority::batch;
    bool budget_defer = false;
    if (t.budget) {
      const Budget& b = *t.budget;
      if (req.cost_p90 > b.limit) {
        return reject_now("exceeds_budget", "The request's projected cost exceeds tenant '" + t.name + "''s whole budget.",
                          std::nullopt);
      }
      if (b.spent.pico() > b.limit.pico() - req.cost_p90.pico()) {
        if (!batch_lane || b.window == BudgetWindow::total) {
          auto retry = resets_in(t, now);
          return reject_now("budget_exceeded",
                            "The budget of tenant '" + t.name + "' is spent" +
                                (retry ? "; retry after the window resets in " + fmt_s(*retry) + " s." : "."),
                            retry);
        }
        budget_defer = true;
      }
    }
    const std::uint32_t slot = new_slot();
    Rec& r = recs[slot];
    r.id = req.id;
    r.model = req.model;
    r.priority = req.priority;
    r.deadline_s = req.deadline_s;
    r.input_tokens = req.input_tokens;
    r.est_output_p50 = req.est_output_p50;
    r.cost_p50 = req.cost_p50;
    r.cost_p90 = req.cost_p90;
    r.live = true;
    r.in_queue = false;
    r.urgent_at = UrgentAt::none;
    r.state = RequestState::queued;  // not yet in any structure (in_queue false)
    r.budget_deferred = false;
    r.promoted = false;
    r.tenant = tenant_idx(t);
    r.submitted_at = now;
    r.tpot = learned_tpot(req.model);
    r.pred_service = predict_service(req, r.tpot);
    r.key = Key{};
    r.key.seq = ++seq;
    r.reserved = Money();
    r.id_hash = id_hash;
    ids.insert(id_hash, slot);  // free_rec releases it
    cost_sum += static_cast<double>(req.cost_p50.pico());
    cost_n++;

    Decision d;
    if (budget_defer) {
      to_lane(slot, true, now);
      n_deferred++;
      d.kind = DecisionKind::defer;
      d.reason = "budget_deferred";
      d.retry_after_s = resets_in(t, now);
      d.message = "Tenant '" + t.name + "''s budget is spent for this window; the batch request waits in the "
                  "deferred lane until the window resets.";
      return d;
    }
    const Block b = blocked(r, t, now, batch_lane, false);
    if (b == Block::none && pick(now, true).slot == kNone) {
      start(slot, now);
      n_admitted++;
      d.kind = DecisionKind::admit;
      d.reason = "ok";
      d.message = "Admitted: the request runs now.";
      d.reserved = r.reserved;
      return d;
    }
    if (batch_lane) {
      to_lane(slot, false, now);
      n_deferred++;
      d.kind = DecisionKind::defer;
      d.reason = "deferred";
      d.message = "Batch request deferred: it runs when capacity and budget are free.";
      return d;
    }
    if (cfg.max_queue && index.size() >= *cfg.max_queue) {
      Decision rej = *cfg.max_queue == 0 && b != Block::none
                         ? blocked_reject(b, r, t, now)
                         : reject_now("queue_full", "The queue is full; retry later.", estimate_wait(0));
      free_rec(slot);
      return rej;
    }
    if ((b == Block::rpm || b == Block::tpm) && cfg.max_wait_s && rate_wait(r, t) > *cfg.max_wait_s) {
      Decision rej = blocked_reject(b, r, t, now);
      free_rec(slot);
      return rej;
    }
    const std::uint64_t pos = enqueue(slot);
    n_queued++;
    d.kind = DecisionKind::queue;
    d.reason = "queued";
    d.position = pos;
    d.eta_s = std::max(estimate_wait(pos), rate_wait(r, t));
    switch (b) {
      case Block::paused: d.message = "Queued: the scheduler is paused by an administrator."; break;
      case Block::rpm: d.message = "Queued: waiting for the requests-per-minute limit."; break;
      case Block::tpm: d.message = "Queued: waiting for the tokens-per-minute limit."; break;
      case Block::budget_reserved: d.message = "Queued: in-flight requests hold the rest of the budget."; break;
      default: {  // one allocation, not three
        char digits[24];
        const auto end = std::to_chars(digits, digits + sizeof digits, pos).ptr;
        d.message.reserve(40);
        d.message.append("Queued behind ").append(digits, end).append(" request(s).");
      }
    }
    return d;
  }

  std::vector<std::string> pop_ready(double now) {
    promote(now);
    shed_waiting(now);
    shed_heads(now);
    std::vector<std::string> out;
    for (auto& id : ready_outbox) {  // dispatched by an admin, unless already ended
      const std::uint32_t slot = live_slot(id);
      if (slot != kNone && recs[slot].state == RequestState::running) out.push_back(std::move(id));
    }
    ready_outbox.clear();
    for (;;) {
      const Pick p = pick(now, false);
      if (p.slot == kNone) break;
      start(p.slot, now);
      out.push_back(recs[p.slot].id);
    }
    return out;
  }

  std::optional<double> next_wakeup(double now) {
    if (!rejected_outbox.empty() || !ready_outbox.empty()) return now;
    shed_waiting(now);
    shed_heads(now);
    if (!rejected_outbox.empty()) return now;
    const Pick p = pick(now, true);
    if (p.slot != kNone || p.shed_due) return now;
    double best = kInf;
    if (cfg.max_wait_s) {
      for (const auto& [s, slot] : wait_fifo) {
        const Rec& r = recs[slot];
        if (!r.live || r.key.seq != s || r.state != RequestState::queued) continue;
        best = std::min(best, max_wait_due(r.submitted_at));
        break;
      }
    }
    // Only rate limits, deadlines and budget windows make time alone change anything.
    const bool timed = rpm.on || tpm.on || cfg.tenant_rpm || cfg.tenant_tpm || cfg.shed_expired || any_budget;
    if (!paused && timed) {
      auto consider = [&](const Rec& r, const Tenant& t, bool lane) {
        if (cfg.shed_expired && r.deadline_s) best = std::min(best, std::nextafter(*r.deadline_s, kInf));
        const double w = rate_wait(r, t);
        if (w > 0) best = std::min(best, now + w);
        if (t.budget && (lane || r.budget_deferred)) {
          const auto reset = resets_in(t, now);
          if (reset) best = std::min(best, now + *reset);
        }
      };
      for (const TenantKey& tk : tenant_order) {
        Tenant& t = tenants[tk.tenant];
        consider(recs[head_of(t)->slot], t, false);
      }
      // The lane: its first request stands for the global rate limits; tenants with waiting lane
      // requests and a budget wake at their window reset.
      if (!deferred.empty()) {
        const Rec& first = recs[deferred.begin()->slot];
        const double w = rate_wait(first, tenants[first.tenant]);
        if (w > 0) best = std::min(best, now + w);
        for (const Tenant& t : tenants) {
          if (t.deferred == 0) continue;
          if (t.budget)
            if (const auto reset = resets_in(t, now)) best = std::min(best, now + *reset);
          // Tenant buckets: by the time they are full again, any lane request of theirs fits.
          if (t.rpm.on && t.rpm.level < t.rpm.capacity) best = std::min(best, now + t.rpm.wait_for(t.rpm.capacity));
          if (t.tpm.on && t.tpm.level < t.tpm.capacity) best = std::min(best, now + t.tpm.wait_for(t.tpm.capacity));
        }
      }
    }
    if (best == kInf) return std::nullopt;
    return std::max(best, now);
  }

  std::uint32_t live_slot(const std::string& id) const { return ids.find(detail::IdTable::hash(id), id, id_of()); }
};

// ---- public wrappers ---------------------------------------------------------------------------

namespace {
void check_time(double now) {
  if (!std::isfinite(now)) throw Error(ErrorCode::invalid_argument, "now must be a finite number of seconds");
}
}  // namespace

Scheduler::Scheduler(SchedulerConfig config) {
  auto positive = [](const std::optional<double>& v, const char* name) {
    if (v && !(*v > 0 && std::isfinite(*v)))
      throw Error(ErrorCode::invalid_argument, std::string(name) + " must be a positive number");
  };
  positive(config.tpm, "tpm");
  positive(config.rpm, "rpm");
  positive(config.tenant_tpm, "tenant_tpm");
  positive(config.tenant_rpm, "tenant_rpm");
  if (config.max_wait_s && !(*config.max_wait_s >= 0 && std::isfinite(*config.max_wait_s)))
    throw Error(ErrorCode::invalid_argument, "max_wait_s must be a non-negative number");
  if ((config.max_concurrency && *config.max_concurrency == 0) ||
      (config.tenant_max_concurrency && *config.tenant_max_concurrency == 0))
    throw Error(ErrorCode::invalid_argument, "concurrency limits must be at least 1");
  if (!(config.tail_share >= 0))
    throw Error(ErrorCode::invalid_argument, "tail_share must be >= 0");
  if (!(config.tenant_idle_forget_s >= 0))
    throw Error(ErrorCode::invalid_argument, "tenant_idle_forget_s must be >= 0 (infinity: only max_tenant_records)");
  if (!(config.batch_max_defer_s >= 0))
    throw Error(ErrorCode::invalid_argument, "batch_max_defer_s must be >= 0 (infinity: never promote)");
  if (!(config.budget_defer_fraction > 0 && config.budget_defer_fraction <= 1))
    throw Error(ErrorCode::invalid_argument, "budget_defer_fraction must be in (0, 1]");
  if (!(config.ttft_s >= 0 && config.tpot_s >= 0 && config.sjf_aging >= 0 && config.cost_aging_s >= 0 &&
        config.urgency_s >= 0))
    throw Error(ErrorCode::invalid_argument, "service-time priors and aging factors must be non-negative");
  impl_ = std::make_unique<Impl>(std::move(config));
}

Scheduler::~Scheduler() = default;

void Scheduler::set_budget(const std::string& tenant, Money limit, BudgetWindow window) {
  if (limit.pico() < 0) throw Error(ErrorCode::invalid_argument, "a budget limit cannot be negative");
  std::lock_guard lock(impl_->mu);
  Tenant& t = impl_->tenant_of(tenant);
  impl_->any_budget = true;
  if (!t.budget) t.budget.emplace();
  if (t.budget->window != window) t.budget->start = std::numeric_limits<double>::quiet_NaN();
  t.budget->limit = limit;
  t.budget->window = window;
}

void Scheduler::clear_budget(const std::string& tenant) {
  std::lock_guard lock(impl_->mu);
  impl_->tenant_of(tenant).budget.reset();
}

void Scheduler::set_spent(const std::string& tenant, Money spent, double now) {
  check_time(now);
  if (spent.pico() < 0) throw Error(ErrorCode::invalid_argument, "spent cannot be negative");
  std::lock_guard lock(impl_->mu);
  Tenant& t = impl_->tenant_of(tenant);
  if (!t.budget) throw Error(ErrorCode::invalid_argument, "tenant '" + tenant + "' has no budget; call set_budget first");
  impl_->roll(*t.budget, now);
  t.budget->spent = spent;
}

void Scheduler::set_weight(const std::string& tenant, double weight) {
  if (!(weight > 0 && std::isfinite(weight))) throw Error(ErrorCode::invalid_argument, "weight must be positive");
  std::lock_guard lock(impl_->mu);
  impl_->tenant_of(tenant).weight = weight;
}

void Scheduler::add_service(const std::string& tenant, std::uint64_t input_tokens, std::uint64_t output_tokens) {
  std::lock_guard lock(impl_->mu);
  Impl& m = *impl_;
  Tenant& t = m.tenant_of(tenant);
  t.counter += (m.cfg.vtc_input_weight * static_cast<double>(input_tokens) +
                m.cfg.vtc_output_weight * static_cast<double>(output_tokens)) / t.weight;
  if (m.fair_order() && !m.queue_empty(t)) m.reindex(t);
  m.note_idle(t, m.last_now);  // a tenant served only elsewhere is an idle record here
}

Decision Scheduler::submit(const ScheduledRequest& request, double now) {
  check_time(now);
  if (request.id.empty()) throw Error(ErrorCode::invalid_argument, "request id must not be empty");
  if (request.est_output_p90 < request.est_output_p50)
    throw Error(ErrorCode::invalid_argument, "est_output_p90 must be >= est_output_p50");
  if (request.cost_p50.pico() < 0 || request.cost_p90.pico() < 0 || request.cost_max.pico() < 0)
    throw Error(ErrorCode::invalid_argument, "projected costs cannot be negative");
  if (request.cost_p90 < request.cost_p50) throw Error(ErrorCode::invalid_argument, "cost_p90 must be >= cost_p50");
  if (request.deadline_s && !std::isfinite(*request.deadline_s))
    throw Error(ErrorCode::invalid_argument, "deadline_s must be finite");
  std::lock_guard lock(impl_->mu);
  return impl_->submit(request, now);
}

std::vector<std::string> Scheduler::pop_ready(double now) {
  check_time(now);
  std::lock_guard lock(impl_->mu);
  return impl_->pop_ready(now);
}

std::vector<std::pair<std::string, Decision>> Scheduler::pop_rejected(double now) {
  check_time(now);
  std::lock_guard lock(impl_->mu);
  impl_->shed_waiting(now);
  impl_->shed_heads(now);
  std::vector<std::pair<std::string, Decision>> out = std::move(impl_->rejected_outbox);
  impl_->rejected_outbox.clear();
  return out;
}

bool Scheduler::complete(const std::string& id, double now, Money actual_cost, std::uint64_t input_tokens,
                         std::uint64_t output_tokens) {
  check_time(now);
  if (actual_cost.pico() < 0) throw Error(ErrorCode::invalid_argument, "actual cost cannot be negative");
  std::lock_guard lock(impl_->mu);
  const std::uint32_t h = detail::IdTable::hash(id);
  impl_->ids.prefetch(h);
  const std::uint32_t slot = impl_->running_ids.find(h, id, impl_->id_of());
  if (slot == kNone) return false;
  impl_->finish(slot, now, &actual_cost, input_tokens, output_tokens);
  impl_->n_completed++;
  impl_->free_rec(slot);
  return true;
}

bool Scheduler::cancel(const std::string& id, double now) {
  check_time(now);
  std::lock_guard lock(impl_->mu);
  Impl& m = *impl_;
  const std::uint32_t slot = m.live_slot(id);
  if (slot == kNone) return false;
  Rec& r = m.recs[slot];
  Tenant& t = m.tenants[r.tenant];
  if (r.state == RequestState::running) m.finish(slot, now, nullptr, 0, 0);
  else if (r.state == RequestState::queued) m.unqueue(slot);
  else m.unlane(slot);
  m.n_cancelled++;
  m.free_rec(slot);
  m.note_idle(t, now);
  return true;
}

std::optional<double> Scheduler::next_wakeup(double now) {
  check_time(now);
  std::lock_guard lock(impl_->mu);
  return impl_->next_wakeup(now);
}

std::optional<RequestState> Scheduler::status(const std::string& id) const {
  std::lock_guard lock(impl_->mu);
  const std::uint32_t slot = impl_->live_slot(id);
  if (slot == kNone) return std::nullopt;
  return impl_->recs[slot].state;
}

BudgetUsage Scheduler::usage(const std::string& tenant, double now) {
  check_time(now);
  std::lock_guard lock(impl_->mu);
  Tenant& t = impl_->tenant_of(tenant);
  BudgetUsage u;
  u.reserved = t.reserved;
  if (t.budget) {
    impl_->roll(*t.budget, now);
    u.spent = t.budget->spent;
    u.limit = t.budget->limit;
    u.window = t.budget->window;
    if (t.budget->window != BudgetWindow::total) u.resets_at = budget_window_bounds(t.budget->window, now).second;
  } else {
    u.spent = t.spent_all;
  }
  impl_->note_idle(t, now);
  return u;
}

RateLimitStatus Scheduler::rate_limits(const std::string& tenant, double now) {
  check_time(now);
  std::lock_guard lock(impl_->mu);
  Impl& m = *impl_;
  Tenant& t = m.tenant_of(tenant);
  m.refill(t, now);
  RateLimitStatus st;
  auto fill = [](const Bucket& g, const Bucket& own, std::optional<double>& limit, std::optional<double>& remaining,
                 std::optional<double>& reset) {
    const Bucket* b = nullptr;
    if (g.on && own.on) b = own.level <= g.level ? &own : &g;
    else if (g.on) b = &g;
    else if (own.on) b = &own;
    if (!b) return;
    limit = b->capacity;
    remaining = std::max(0.0, std::floor(b->level));
    reset = (b->capacity - b->level) / b->rate;
  };
  fill(m.rpm, t.rpm, st.limit_requests, st.remaining_requests, st.reset_requests_s);
  fill(m.tpm, t.tpm, st.limit_tokens, st.remaining_tokens, st.reset_tokens_s);
  m.note_idle(t, now);
  return st;
}

SchedulerSnapshot Scheduler::snapshot(double now, std::size_t max_items) {
  check_time(now);
  std::lock_guard lock(impl_->mu);
  Impl& m = *impl_;
  SchedulerSnapshot s;
  auto entry = [&](std::uint32_t slot, std::uint64_t pos) {
    const Rec& r = m.recs[slot];
    SnapshotEntry e;
    e.id = r.id;
    e.tenant = m.tenants[r.tenant].name;
    e.model = r.model;
    e.priority = r.priority;
    e.state = r.state;
    e.position = pos;
    e.wait_s = now - (r.state == RequestState::running ? r.started_at : r.submitted_at);
    e.cost_p50 = r.cost_p50;
    e.cost_p90 = r.cost_p90;
    e.reserved = r.reserved;
    e.deadline_s = r.deadline_s;
    e.input_tokens = r.input_tokens;
    e.est_output_p50 = r.est_output_p50;
    return e;
  };
  std::uint64_t pos = 0;
  for (const Key& k : m.index) {
    if (pos >= max_items) break;
    s.queue.push_back(entry(k.slot, pos++));
  }
  pos = 0;
  for (const Key& k : m.deferred) {
    if (pos >= max_items) break;
    s.deferred.push_back(entry(k.slot, pos++));
  }
  std::vector<std::uint32_t> run(m.running);
  std::sort(run.begin(), run.end(), [&](std::uint32_t a, std::uint32_t b) {
    const Rec& x = m.recs[a];
    const Rec& y = m.recs[b];
    return x.started_at != y.started_at ? x.started_at < y.started_at : x.key.seq < y.key.seq;
  });
  pos = 0;
  for (std::uint32_t slot : run) {
    if (pos >= max_items) break;
    s.running.push_back(entry(slot, pos++));
  }
  for (const Tenant& t : m.tenants) {
    if (m.queue_empty(t) && t.deferred == 0 && t.running == 0 && t.reserved.pico() == 0) continue;
    TenantSnapshot ts;
    ts.tenant = t.name;
    ts.queued = m.queue_size(t);
    ts.deferred = t.deferred;
    ts.running = t.running;
    ts.reserved = t.reserved;
    ts.vtc_counter = t.counter;
    ts.weight = t.weight;
    s.tenants.push_back(std::move(ts));
  }
  std::sort(s.tenants.begin(), s.tenants.end(),
            [](const TenantSnapshot& a, const TenantSnapshot& b) { return a.tenant < b.tenant; });
  s.counters = {{"submitted", m.n_submitted}, {"admitted", m.n_admitted},   {"queued", m.n_queued},
                {"deferred", m.n_deferred},   {"rejected", m.n_rejected},   {"started", m.n_started},
                {"completed", m.n_completed}, {"cancelled", m.n_cancelled}, {"shed", m.n_shed},
                {"dispatched", m.n_dispatched}, {"queue_length", m.index.size()},
                {"deferred_length", m.deferred.size()}, {"running", m.running.size()},
                {"tenants", m.tenant_ids.size()}};
  s.reserved_total = m.reserved_total;
  s.policy = m.cfg.policy;
  s.paused = m.paused;
  return s;
}

void Scheduler::pause() {
  std::lock_guard lock(impl_->mu);
  impl_->paused = true;
}

void Scheduler::resume() {
  std::lock_guard lock(impl_->mu);
  impl_->paused = false;
}

bool Scheduler::paused() const {
  std::lock_guard lock(impl_->mu);
  return impl_->paused;
}

void Scheduler::set_policy(Policy policy) {
  std::lock_guard lock(impl_->mu);
  Impl& m = *impl_;
  if (m.cfg.policy == policy) return;
  // Re-key every waiting request under the new order. Batch requests stay in the deferred lane even
  // when switching to fifo (they were promised a later run, not a queue position).
  std::vector<std::uint32_t> queued;
  for (const Key& k : m.index) queued.push_back(k.slot);
  std::vector<std::uint32_t> lane;
  for (const Key& k : m.deferred) lane.push_back(k.slot);
  for (std::uint32_t slot : queued) m.unqueue(slot);
  for (std::uint32_t slot : lane) m.unlane(slot);
  m.cfg.policy = policy;
  m.wait_fifo.clear();
  m.clear_urgent();
  for (Tenant& t : m.tenants) m.reindex(t);
  std::sort(queued.begin(), queued.end(), [&](std::uint32_t a, std::uint32_t b) { return m.recs[a].key.seq < m.recs[b].key.seq; });
  for (std::uint32_t slot : queued) m.enqueue(slot, false);
  for (std::uint32_t slot : lane) m.to_lane(slot, m.recs[slot].budget_deferred, std::nan(""));
}

Policy Scheduler::policy() const {
  std::lock_guard lock(impl_->mu);
  return impl_->cfg.policy;
}

bool Scheduler::dispatch(const std::string& id, double now) {
  check_time(now);
  std::lock_guard lock(impl_->mu);
  Impl& m = *impl_;
  const std::uint32_t slot = m.live_slot(id);
  if (slot == kNone || m.recs[slot].state == RequestState::running) return false;
  Rec& r = m.recs[slot];
  if (m.blocked(r, m.tenants[r.tenant], now, false, true) != Block::none) return false;
  m.start(slot, now);
  m.n_dispatched++;
  m.ready_outbox.push_back(r.id);
  return true;
}

bool Scheduler::reject(const std::string& id, double now, const std::string& reason) {
  check_time(now);
  std::lock_guard lock(impl_->mu);
  Impl& m = *impl_;
  const std::uint32_t slot = m.live_slot(id);
  if (slot == kNone || m.recs[slot].state == RequestState::running) return false;
  m.shed(slot, now, reason.empty() ? "admin" : reason.c_str(), "The request was rejected by an administrator.",
         std::nullopt);
  m.n_shed--;  // an admin decision, not load shedding
  return true;
}

bool Scheduler::defer(const std::string& id, double now) {
  check_time(now);
  std::lock_guard lock(impl_->mu);
  Impl& m = *impl_;
  const std::uint32_t slot = m.live_slot(id);
  if (slot == kNone) return false;
  Rec& r = m.recs[slot];
  if (r.state == RequestState::deferred) return true;
  if (r.state != RequestState::queued) return false;
  m.unqueue(slot);
  m.to_lane(slot, false, now);
  m.n_deferred++;
  return true;
}

std::size_t Scheduler::queued_count() const {
  std::lock_guard lock(impl_->mu);
  return impl_->index.size();
}

std::size_t Scheduler::deferred_count() const {
  std::lock_guard lock(impl_->mu);
  return impl_->deferred.size();
}

std::size_t Scheduler::running_count() const {
  std::lock_guard lock(impl_->mu);
  return impl_->running.size();
}

}  // namespace tokenlane
