// Internal: the ordered schema migrations of the ledger.
#pragma once

#include <vector>

namespace tokenlane::ledger_detail {

struct Migration {
  int version;              // 1, 2, 3, ... with no gaps
  const char* description;  // recorded in schema_version
  const char* sql;          // one or more statements, run inside one transaction
};

const std::vector<Migration>& migrations();

}  // namespace tokenlane::ledger_detail
