// The ledger's schema as an ordered list of migrations. Each step runs once, in its own write
// transaction, and bumps schema_version; a step is never edited after it ships: change the schema
// by appending a step.
#include "schema.hpp"

namespace tokenlane::ledger_detail {

const std::vector<Migration>& migrations() {
  static const std::vector<Migration> steps = {
      {1, "users, api keys, requests, budgets, budget events, config", R"sql(
CREATE TABLE users (
  id            INTEGER PRIMARY KEY,
  email         TEXT NOT NULL UNIQUE COLLATE NOCASE,
  name          TEXT,
  role          TEXT NOT NULL DEFAULT 'client',
  tenant        TEXT,                       -- NULL: the email is the tenant
  disabled      INTEGER NOT NULL DEFAULT 0,
  password_hash TEXT,
  created_at    REAL NOT NULL
);

CREATE TABLE api_keys (
  id           INTEGER PRIMARY KEY,
  user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  name         TEXT NOT NULL,
  prefix       TEXT NOT NULL,               -- shown in lists; too short to guess the key from
  secret_hash  TEXT NOT NULL UNIQUE,        -- hex SHA-256 of the whole key
  created_at   REAL NOT NULL,
  last_used_at REAL,
  revoked_at   REAL
);
CREATE INDEX api_keys_user ON api_keys(user_id);

CREATE TABLE requests (
  id                  TEXT PRIMARY KEY,
  tenant              TEXT,
  user_id             INTEGER REFERENCES users(id) ON DELETE SET NULL,
  key_id              INTEGER REFERENCES api_keys(id) ON DELETE SET NULL,
  route               TEXT,
  model               TEXT,
  status              TEXT NOT NULL,
  decision            TEXT,
  reason              TEXT,
  priority            TEXT,
  deadline_s          REAL,
  max_tokens          INTEGER,
  created_at          REAL NOT NULL,
  started_at          REAL,
  finished_at         REAL,
  queue_ms            REAL,
  est_input_tokens    INTEGER,
  est_output_p50      INTEGER,
  est_output_p90      INTEGER,
  est_cost_pico_usd   INTEGER,
  reserved_pico_usd   INTEGER,
  input_tokens        INTEGER,
  output_tokens       INTEGER,
  cached_input_tokens INTEGER,
  reasoning_tokens    INTEGER,
  cost_pico_usd       INTEGER,
  error               TEXT,
  prompt_preview      TEXT,
  response_preview    TEXT
);
CREATE INDEX requests_created ON requests(created_at);
CREATE INDEX requests_tenant_created ON requests(tenant, created_at);
CREATE INDEX requests_user_created ON requests(user_id, created_at);
CREATE INDEX requests_status ON requests(status);
CREATE INDEX requests_model ON requests(model);

-- One row per tenant: the counters every worker process updates atomically.
CREATE TABLE budgets (
  tenant            TEXT PRIMARY KEY,
  limit_pico_usd    INTEGER,                -- NULL: unlimited, spend still tracked
  period            TEXT NOT NULL,          -- hour | day | month | total
  window_start      INTEGER NOT NULL,       -- Unix seconds, UTC start of the window `spent` covers
  spent_pico_usd    INTEGER NOT NULL DEFAULT 0,
  reserved_pico_usd INTEGER NOT NULL DEFAULT 0,
  updated_at        REAL NOT NULL
);

CREATE TABLE budget_events (
  id                INTEGER PRIMARY KEY,
  tenant            TEXT NOT NULL,
  kind              TEXT NOT NULL,          -- reserve | settle | release | set_budget
  amount_pico_usd   INTEGER,                -- reserved, charged, released, or the new limit
  reserved_pico_usd INTEGER,                -- settle: the reservation it replaced
  at                REAL NOT NULL
);
CREATE INDEX budget_events_tenant_at ON budget_events(tenant, at);

CREATE TABLE config (
  key        TEXT PRIMARY KEY,
  value      TEXT NOT NULL,                 -- JSON
  updated_at REAL NOT NULL,
  updated_by TEXT
);

CREATE TABLE config_history (
  id        INTEGER PRIMARY KEY,
  key       TEXT NOT NULL,
  old_value TEXT,
  new_value TEXT NOT NULL,
  actor     TEXT,
  at        REAL NOT NULL
);
CREATE INDEX config_history_key ON config_history(key, id);
)sql"},
      {2, "cost levers: response cache outcome and savings, trimmed input", R"sql(
ALTER TABLE requests ADD COLUMN cache TEXT;                        -- hit | miss | bypass (NULL: cache off)
ALTER TABLE requests ADD COLUMN cache_saved_pico_usd INTEGER;      -- a hit: what the call would have cost
ALTER TABLE requests ADD COLUMN prompt_cache_saved_pico_usd INTEGER;  -- provider cached-input discount
ALTER TABLE requests ADD COLUMN untrimmed_input_tokens INTEGER;    -- prompt tokens before context trimming
)sql"},
      {3, "principal hierarchy: a member's team and organisation, a request's end user", R"sql(
ALTER TABLE users ADD COLUMN team TEXT;
ALTER TABLE users ADD COLUMN org TEXT;
ALTER TABLE requests ADD COLUMN end_user TEXT;
CREATE INDEX requests_end_user ON requests(tenant, end_user);
)sql"},
      {4, "routing: the requested model and the rule that chose the served one; upstream attempts; batch lane", R"sql(
ALTER TABLE requests ADD COLUMN requested_model TEXT;   -- NULL: the served model (column model) was asked for
ALTER TABLE requests ADD COLUMN route_rule TEXT;        -- the routing rule that chose the served model
ALTER TABLE requests ADD COLUMN attempts INTEGER;       -- upstream calls made (fallbacks included)
ALTER TABLE requests ADD COLUMN fallbacks INTEGER;      -- how many times the call moved to another model
ALTER TABLE requests ADD COLUMN batch INTEGER;          -- 1: sent through the provider's batch API
-- the same usage priced at the requested model and list price (set when routing or the batch lane
-- changed the price): the saving is this minus cost_pico_usd
ALTER TABLE requests ADD COLUMN unrouted_cost_pico_usd INTEGER;
CREATE INDEX requests_route_rule ON requests(route_rule);
)sql"},
      {5, "crash recovery: the worker process that owns a request row or a budget hold; the budget version", R"sql(
ALTER TABLE requests ADD COLUMN owner TEXT;             -- the worker process (host:pid:start) that runs it
CREATE INDEX requests_open_owner ON requests(owner) WHERE finished_at IS NULL;
-- One row per reservation in force: what a worker holds, so that a dead worker's share is freed.
CREATE TABLE holds (
  request_id      TEXT PRIMARY KEY,
  owner           TEXT NOT NULL,
  budgets         TEXT NOT NULL,                    -- JSON array of the levels reserved at
  amount_pico_usd INTEGER NOT NULL,
  created_at      REAL NOT NULL
);
CREATE INDEX holds_owner ON holds(owner);
-- Counters read on every request: budget_version changes whenever any budget's limit is set.
CREATE TABLE ledger_meta (
  key   TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
)sql"},
      {6, "token budgets: a token limit beside the USD one at every level, tokens spent and reserved", R"sql(
-- Tokens are input + output tokens, counted in the same window (period, window_start) as USD.
ALTER TABLE budgets ADD COLUMN limit_tokens INTEGER;                        -- NULL: no token budget
ALTER TABLE budgets ADD COLUMN spent_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE budgets ADD COLUMN reserved_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE budget_events ADD COLUMN tokens INTEGER;           -- reserved, charged, released, or the new token limit
ALTER TABLE budget_events ADD COLUMN reserved_tokens INTEGER;  -- settle: the token reservation it freed
ALTER TABLE holds ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0;  -- reserved at every level of the hold
)sql"},
  };
  return steps;
}

}  // namespace tokenlane::ledger_detail
