//! Lua scripts: each task transition is one script, so it is atomic. Every
//! key a script touches starts with the partition prefix `P` (ARGV[1]), which
//! carries the partition's hash tag: no script ever crosses slots.
//!
//! Task hash fields: st state, at attempt, fl failures, tk lease token,
//! ss session, wk worker id, qk queue key, sp spec record, oc outcome record,
//! ua updated ms, du due ms, fa finished ms, ex expires ms, ttl result ttl ms,
//! w watched (its changes are published on the events channel).

/// Helpers shared by the scripts (prepended to each).
const COMMON: &str = r#"
-- Task events go out only for tasks somebody watches (field w, set by the
-- watch script), so unwatched tasks cost no pub/sub traffic.
local function notify(t, id, ev)
  if redis.call('HEXISTS', t, 'w') == 1 then redis.call('PUBLISH', ev, id) end
end

-- A watched task that finished is sent along with its event, so that its
-- waiters need not read it: id, newline, then per field: name, space,
-- length, space, value.
local function notify_finished(t, id, ev)
  if redis.call('HEXISTS', t, 'w') == 0 then return end
  local h = redis.call('HGETALL', t)
  local parts = {id, '\n'}
  for i = 1, #h, 2 do
    parts[#parts + 1] = h[i] .. ' ' .. #h[i + 1] .. ' ' .. h[i + 1]
  end
  redis.call('PUBLISH', ev, table.concat(parts))
end

-- The ready channel sits beside the events channel (prefix..'ev').
local function ready_channel(ev)
  return string.sub(ev, 1, -3) .. 'rdy'
end

-- Gives back the task's concurrency permit, if it holds one, and moves the
-- first task waiting for that key back to the head of its queue.
local function free_permit_of(P, id, ck, ev)
  if not ck or redis.call('SREM', P .. 'cc:' .. ck, id) == 0 then return end
  local waiting = redis.call('LPOP', P .. 'cw:' .. ck)
  if not waiting then return end
  local qk = redis.call('HGET', P .. 't:' .. waiting, 'qk')
  if qk then
    redis.call('LPUSH', P .. 'q:' .. qk, waiting)
    redis.call('PUBLISH', ready_channel(ev), qk)
  end
end

local function free_permit(P, t, id, ev)
  free_permit_of(P, id, redis.call('HGET', t, 'ck'), ev)
end

-- Takes a QUEUED task out of its queue or its concurrency waiting list.
local function unqueue(P, t, id, qk)
  if redis.call('LREM', P .. 'q:' .. qk, 1, id) == 0 then
    local ck = redis.call('HGET', t, 'ck')
    if ck then redis.call('LREM', P .. 'cw:' .. ck, 1, id) end
  end
end

-- g: the task's ck, ttl and w fields when the caller already read them;
-- oc: an outcome record to store with the final state.
local function finish(P, t, id, st, now, ev, g, oc)
  g = g or redis.call('HMGET', t, 'ck', 'ttl', 'w')
  free_permit_of(P, id, g[1], ev)
  if oc then
    redis.call('HSET', t, 'st', st, 'ua', now, 'fa', now, 'oc', oc)
  else
    redis.call('HSET', t, 'st', st, 'ua', now, 'fa', now)
  end
  -- Absent: the platform default (DEFAULT_TTL_MS, substituted at build).
  local ttl = tonumber(g[2] or 'DEFAULT_TTL_MS')
  if ttl and ttl > 0 then redis.call('PEXPIRE', t, ttl) end
  if g[3] then notify_finished(t, id, ev) end
end

local function release(P, sid, now, ev, rdy, out)
  local sl = P .. 'sl:' .. sid
  local pushed = {}
  -- Ids are UUIDv7, ordered by submission: pushing the newest first to the
  -- head leaves the queue's head in submission order again.
  local ids = redis.call('SMEMBERS', sl)
  table.sort(ids, function(a, b) return a > b end)
  for _, id in ipairs(ids) do
    local t = P .. 't:' .. id
    local f = redis.call('HMGET', t, 'st', 'ss', 'qk')
    if (f[1] == '3' or f[1] == '4') and f[2] == sid then
      free_permit(P, t, id, ev)
      redis.call('HSET', t, 'st', 2, 'ua', now)
      redis.call('LPUSH', P .. 'q:' .. f[3], id)
      pushed[f[3]] = true
      notify(t, id, ev)
      out[#out + 1] = id
    end
  end
  redis.call('DEL', sl)
  redis.call('ZREM', P .. 'sess', sid)
  for qk, _ in pairs(pushed) do redis.call('PUBLISH', rdy, qk) end
end
"#;

/// ARGV: P, now, rdy, then per task: id, qk, spec, due, expires, ttl,
/// idempotency key, idempotency ttl, rate bucket, rate interval ms,
/// concurrency key, concurrency limit. Returns per task: id, duplicate, state.
const ENQUEUE: &str = r#"
local P, now, rdy = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out, pushed = {}, {}
for b = 4, #ARGV, 12 do
  local id, qk, due, ik = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 3]), ARGV[b + 6]
  local existing = false
  if ik ~= '' then
    existing = redis.call('GET', P .. 'idem:' .. ik)
    if not existing then redis.call('SET', P .. 'idem:' .. ik, id, 'PX', ARGV[b + 7]) end
  end
  if existing then
    local st = redis.call('HGET', P .. 't:' .. existing, 'st')
    out[#out + 1] = existing; out[#out + 1] = 1; out[#out + 1] = tonumber(st or '0')
  else
    local st = 2
    if due > now then st = 1 end
        -- Only what differs from the defaults is written (attempt, failures and
    -- token 0; updated and due at creation; no expiry): small hashes stay in
    -- Redis' compact encoding.
        redis.call('HSET', P .. 't:' .. id, 'st', st, 'qk', qk, 'sp', ARGV[b + 2])
    if ARGV[b + 5] ~= '' then redis.call('HSET', P .. 't:' .. id, 'ttl', ARGV[b + 5]) end
    if st == 1 then redis.call('HSET', P .. 't:' .. id, 'du', due) end
    if ARGV[b + 4] ~= '0' then redis.call('HSET', P .. 't:' .. id, 'ex', ARGV[b + 4]) end
    if ARGV[b + 4] ~= '0' then redis.call('ZADD', P .. 'exp', ARGV[b + 4], id) end
    if ARGV[b + 8] ~= '' then redis.call('HSET', P .. 't:' .. id, 'rb', ARGV[b + 8], 'ri', ARGV[b + 9]) end
    if ARGV[b + 10] ~= '' then redis.call('HSET', P .. 't:' .. id, 'ck', ARGV[b + 10], 'cl', ARGV[b + 11]) end
    if st == 1 then
      redis.call('ZADD', P .. 'sched', due, id)
    else
      redis.call('RPUSH', P .. 'q:' .. qk, id)
      pushed[qk] = true
    end
    out[#out + 1] = id; out[#out + 1] = 0; out[#out + 1] = st
  end
end
for qk, _ in pairs(pushed) do redis.call('PUBLISH', rdy, qk) end
return out
"#;

/// ARGV: P, now, deadline, session, worker, max, ev, start, queue keys...
/// Returns per leased task: id, attempt, failures, token, spec.
const LEASE: &str = r#"
local P, now, deadline, sid, wk = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local max, ev, start = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local nq = #ARGV - 8
local out = {}
local got = 0
-- Paused queues hand out nothing.
local keys = {}
for k = 9, #ARGV do
  local queue = string.match(ARGV[k], '^[^:]+')
  if redis.call('SISMEMBER', P .. 'paused', queue) == 0 then keys[#keys + 1] = ARGV[k] end
end
nq = #keys
-- Admission: a rate-limited task takes the next slot of its bucket (GCRA);
-- a slot in the future parks it, SCHEDULED, until then with the slot kept.
-- A task over its key's concurrency limit waits in the key's list until a
-- permit is freed. Returns whether the task may be leased now.
local function admit(t, id)
  local g = redis.call('HMGET', t, 'rb', 'ri', 'rs', 'ck', 'cl')
  if g[1] then
    local reserved = tonumber(g[3] or '-1')
    if reserved < 0 or reserved > now then
      local bucket = P .. 'rl:' .. g[1]
      local tat = tonumber(redis.call('GET', bucket) or '0')
      if tat < now then tat = now end
      local after = tat + tonumber(g[2])
      redis.call('SET', bucket, string.format('%.3f', after), 'PX', math.ceil(after - now) + 60000)
      if tat > now then
        local slot = math.ceil(tat)
        redis.call('HSET', t, 'st', 1, 'du', slot, 'rs', slot, 'ua', now)
        redis.call('ZADD', P .. 'sched', slot, id)
        notify(t, id, ev)
        return false
      end
    end
    redis.call('HDEL', t, 'rs')
  end
  if g[4] then
    local permits = P .. 'cc:' .. g[4]
    if redis.call('SISMEMBER', permits, id) == 0 then
      if redis.call('SCARD', permits) >= tonumber(g[5]) then
        redis.call('RPUSH', P .. 'cw:' .. g[4], id)
        return false
      end
      redis.call('SADD', permits, id)
    end
  end
  return true
end
-- Priority levels, highest first; level 0 is the plain key.
local levels = {'#9', '#8', '#7', '#6', '#5', '#4', '#3', '#2', '#1', ''}
for _, level in ipairs(levels) do
  local empty, i = 0, 0
  while got < max and empty < nq do
    local qk = keys[1 + ((start + i) % nq)] .. level
    i = i + 1
    local id = redis.call('LPOP', P .. 'q:' .. qk)
    if id then
      empty = 0
      local t = P .. 't:' .. id
      -- One read for everything the common case needs.
      local f = redis.call('HMGET', t, 'st', 'at', 'fl', 'tk', 'ex', 'sp', 'w', 'rb', 'ck', 'pg')
      if f[1] == '2' then
        local ex = tonumber(f[5] or '0')
        if ex > 0 and ex <= now then
          finish(P, t, id, 8, now, ev)
        elseif (not f[8] and not f[9]) or admit(t, id) then
          local at, tk = tonumber(f[2] or '0') + 1, tonumber(f[4] or '0') + 1
          redis.call('HSET', t, 'st', 3, 'at', at, 'tk', tk, 'ss', sid, 'wk', wk, 'ua', now)
          if f[10] then redis.call('HDEL', t, 'pg') end
          if ex > 0 then redis.call('ZREM', P .. 'exp', id) end
          redis.call('SADD', P .. 'sl:' .. sid, id)
          if f[7] then redis.call('PUBLISH', ev, id) end
          out[#out + 1] = id; out[#out + 1] = at; out[#out + 1] = tonumber(f[3] or '0'); out[#out + 1] = tk
          out[#out + 1] = f[6]
          got = got + 1
        end
      end
    else
      empty = empty + 1
    end
  end
  if got >= max then break end
end
if got > 0 then redis.call('ZADD', P .. 'sess', deadline, sid) end
return out
"#;

/// ARGV: P, now, ev, then per report: id, session, token.
const MARK_STARTED: &str = r#"
local P, now, ev = ARGV[1], ARGV[2], ARGV[3]
for b = 4, #ARGV, 3 do
  local id = ARGV[b]
  local t = P .. 't:' .. id
  local f = redis.call('HMGET', t, 'st', 'ss', 'tk')
  if f[1] == '3' and f[2] == ARGV[b + 1] and tonumber(f[3] or '0') == tonumber(ARGV[b + 2]) then
    redis.call('HSET', t, 'st', 4, 'ua', now)
    notify(t, id, ev)
  end
end
return 0
"#;

/// ARGV: P, id. The task's hash fields (none: unknown), after marking it
/// watched: from now on its changes are published.
const WATCH: &str = r#"
local t = ARGV[1] .. 't:' .. ARGV[2]
if redis.call('EXISTS', t) == 0 then return {} end
redis.call('HSET', t, 'w', 1)
return redis.call('HGETALL', t)
"#;

/// ARGV: P, session, deadline. 1 when the session's leases were extended.
const HEARTBEAT: &str = r#"
local key = ARGV[1] .. 'sess'
if redis.call('ZSCORE', key, ARGV[2]) then
  redis.call('ZADD', key, ARGV[3], ARGV[2])
  return 1
end
return 0
"#;

/// ARGV: P, now, ev, then per report: id, session, token, kind (s, f, r),
/// outcome record, retry due. Returns per report: the new state, or -1 not
/// found, -2 stale token, -3 not held.
const COMPLETE: &str = r#"
local P, now, ev = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for b = 4, #ARGV, 6 do
  local id, sid, kind = ARGV[b], ARGV[b + 1], ARGV[b + 3]
  local t = P .. 't:' .. id
  local f = redis.call('HMGET', t, 'st', 'ss', 'tk', 'fl', 'ck', 'ttl', 'w')
  if not f[1] then
    out[#out + 1] = -1
  elseif tonumber(f[3] or '0') ~= tonumber(ARGV[b + 2]) then
    out[#out + 1] = -2
  elseif f[2] ~= sid or (f[1] ~= '3' and f[1] ~= '4') then
    out[#out + 1] = -3
  else
    redis.call('SREM', P .. 'sl:' .. sid, id)
    local g = {f[5], f[6], f[7]}
    if kind == 's' then
      finish(P, t, id, 5, now, ev, g, ARGV[b + 4])
      out[#out + 1] = 5
    else
      redis.call('HSET', t, 'oc', ARGV[b + 4], 'fl', tonumber(f[4] or '0') + 1)
      if kind == 'r' then
        free_permit_of(P, id, f[5], ev)
        redis.call('HSET', t, 'st', 1, 'du', ARGV[b + 5], 'ua', now)
        redis.call('ZADD', P .. 'sched', ARGV[b + 5], id)
        notify(t, id, ev)
        out[#out + 1] = 1
      else
        finish(P, t, id, 6, now, ev, g)
        redis.call('ZADD', P .. 'dlq', now, id)
        out[#out + 1] = 6
      end
    end
  end
end
return out
"#;

/// ARGV: P, session, now, ev, rdy. Returns the requeued ids.
const RELEASE: &str = r#"
local out = {}
release(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], out)
return out
"#;

/// ARGV: P, now, limit, ev, rdy. Returns the requeued ids.
const REAP: &str = r#"
local P, now = ARGV[1], ARGV[2]
local out = {}
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'sess', '-inf', now, 'LIMIT', 0, ARGV[3])) do
  release(P, sid, now, ARGV[4], ARGV[5], out)
end
return out
"#;

/// ARGV: P, now, limit, ev, rdy. Returns promoted, expired, next due (-1: none).
const PROMOTE: &str = r#"
local P, now, ev, rdy = ARGV[1], tonumber(ARGV[2]), ARGV[4], ARGV[5]
local promoted, expired, pushed = 0, 0, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'sched', '-inf', now, 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', P .. 'sched', id)
  local t = P .. 't:' .. id
    local f = redis.call('HMGET', t, 'st', 'qk', 'ex')
  if f[1] == '1' then
    local ex = tonumber(f[3] or '0')
    if ex > 0 and ex <= now then
      finish(P, t, id, 8, now, ev)
      expired = expired + 1
    else
      redis.call('HSET', t, 'st', 2, 'ua', now)
      redis.call('RPUSH', P .. 'q:' .. f[2], id)
      pushed[f[2]] = true
      notify(t, id, ev)
      promoted = promoted + 1
    end
  end
end
for qk, _ in pairs(pushed) do redis.call('PUBLISH', rdy, qk) end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', now, 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', P .. 'exp', id)
  local t = P .. 't:' .. id
  local f = redis.call('HMGET', t, 'st', 'qk')
  if f[1] == '1' then
    redis.call('ZREM', P .. 'sched', id)
    finish(P, t, id, 8, now, ev)
    expired = expired + 1
  elseif f[1] == '2' then
    unqueue(P, t, id, f[2])
    finish(P, t, id, 8, now, ev)
    expired = expired + 1
  end
end
local first = redis.call('ZRANGE', P .. 'sched', 0, 0, 'WITHSCORES')
local next_due = -1
if first[2] then next_due = tonumber(first[2]) end
return {promoted, expired, next_due}
"#;

/// ARGV: P, id, now, ev, rev. Returns 0 when cancelled, -1 not found, or the
/// (uncancellable) state. A leased task is taken from its session, which is
/// told on `rev` ("session id").
const CANCEL: &str = r#"
local P, id, now, ev = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local t = P .. 't:' .. id
local f = redis.call('HMGET', t, 'st', 'qk', 'ss')
if not f[1] then return -1 end
if f[1] == '2' then
  unqueue(P, t, id, f[2])
elseif f[1] == '1' then
  redis.call('ZREM', P .. 'sched', id)
elseif f[1] == '3' or f[1] == '4' then
  redis.call('SREM', P .. 'sl:' .. f[3], id)
  redis.call('PUBLISH', ARGV[5], f[3] .. ' ' .. id)
else
  return tonumber(f[1])
end
redis.call('ZREM', P .. 'exp', id)
finish(P, t, id, 7, now, ev)
return 0
"#;

/// ARGV: P, now, ev, then per report: id, session, token, progress record.
const PROGRESS: &str = r#"
local P, now, ev = ARGV[1], ARGV[2], ARGV[3]
for b = 4, #ARGV, 4 do
  local id = ARGV[b]
  local t = P .. 't:' .. id
  local f = redis.call('HMGET', t, 'st', 'ss', 'tk')
  if (f[1] == '3' or f[1] == '4') and f[2] == ARGV[b + 1] and tonumber(f[3] or '0') == tonumber(ARGV[b + 2]) then
    redis.call('HSET', t, 'pg', ARGV[b + 3], 'ua', now)
    notify(t, id, ev)
  end
end
return 0
"#;

/// ARGV: P, id, ev. 0 forgotten, -1 not found, else the unfinished state.
const FORGET: &str = r#"
local P, id = ARGV[1], ARGV[2]
local t = P .. 't:' .. id
local st = redis.call('HGET', t, 'st')
if not st then return -1 end
if st ~= '5' and st ~= '6' and st ~= '7' and st ~= '8' then return tonumber(st) end
notify(t, id, ARGV[3])
redis.call('DEL', t)
redis.call('ZREM', P .. 'dlq', id)
return 0
"#;

/// ARGV: P, id, now, ev, rdy. 0 replayed, -1 not found, else the state.
const REPLAY: &str = r#"
local P, id, now = ARGV[1], ARGV[2], ARGV[3]
local t = P .. 't:' .. id
local f = redis.call('HMGET', t, 'st', 'qk')
if not f[1] then return -1 end
if f[1] ~= '6' then return tonumber(f[1]) end
redis.call('HSET', t, 'st', 2, 'fl', 0, 'fa', 0, 'ua', now)
redis.call('PERSIST', t)
redis.call('ZREM', P .. 'dlq', id)
redis.call('RPUSH', P .. 'q:' .. f[2], id)
notify(t, id, ARGV[4])
redis.call('PUBLISH', ARGV[5], f[2])
return 0
"#;

/// Schedules live in partition 0: HASH `sch` (id -> Schedule), ZSET `schn`
/// (id -> next run ms; absent when paused or finished), LIST `schr:<id>`.
/// ARGV: P, id, schedule, next (-1: none), mode ("create" or "replace").
const SCHEDULE_PUT: &str = r#"
local P, id, next = ARGV[1], ARGV[2], tonumber(ARGV[4])
local exists = redis.call('HEXISTS', P .. 'sch', id) == 1
if ARGV[5] == 'create' and exists then return 0 end
if ARGV[5] == 'replace' and not exists then return 0 end
redis.call('HSET', P .. 'sch', id, ARGV[3])
redis.call('ZREM', P .. 'schn', id)
if next >= 0 then redis.call('ZADD', P .. 'schn', next, id) end
return 1
"#;

/// ARGV: P, id, expected next, schedule, next (-1: none), run ('' : none).
const SCHEDULE_ADVANCE: &str = r#"
local P, id = ARGV[1], ARGV[2]
local score = redis.call('ZSCORE', P .. 'schn', id)
if not score or tonumber(score) ~= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', P .. 'sch', id, ARGV[4])
if tonumber(ARGV[5]) >= 0 then
  redis.call('ZADD', P .. 'schn', ARGV[5], id)
else
  redis.call('ZREM', P .. 'schn', id)
end
if ARGV[6] ~= '' then
  redis.call('LPUSH', P .. 'schr:' .. id, ARGV[6])
  redis.call('LTRIM', P .. 'schr:' .. id, 0, 99)
end
return 1
"#;

/// ARGV: P, id. 1 when deleted.
const SCHEDULE_DELETE: &str = r#"
local P, id = ARGV[1], ARGV[2]
redis.call('ZREM', P .. 'schn', id)
redis.call('DEL', P .. 'schr:' .. id)
return redis.call('HDEL', P .. 'sch', id)
"#;

/// The compiled scripts (SHA computed once; EVALSHA with EVAL fallback).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub enqueue: redis::Script,
    pub lease: redis::Script,
    pub mark_started: redis::Script,
    pub watch: redis::Script,
    pub heartbeat: redis::Script,
    pub complete: redis::Script,
    pub release: redis::Script,
    pub reap: redis::Script,
    pub promote: redis::Script,
    pub cancel: redis::Script,
    pub progress: redis::Script,
    pub forget: redis::Script,
    pub replay: redis::Script,
    pub schedule_put: redis::Script,
    pub schedule_advance: redis::Script,
    pub schedule_delete: redis::Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let common = COMMON.replace(
            "DEFAULT_TTL_MS",
            &conveyor_core::Limits::default()
                .default_result_ttl_ms
                .to_string(),
        );
        let with_common = |body: &str| redis::Script::new(&format!("{common}\n{body}"));
        Self {
            enqueue: redis::Script::new(ENQUEUE),
            lease: with_common(LEASE),
            mark_started: with_common(MARK_STARTED),
            watch: redis::Script::new(WATCH),
            heartbeat: redis::Script::new(HEARTBEAT),
            complete: with_common(COMPLETE),
            release: with_common(RELEASE),
            reap: with_common(REAP),
            promote: with_common(PROMOTE),
            cancel: with_common(CANCEL),
            progress: with_common(PROGRESS),
            forget: with_common(FORGET),
            replay: with_common(REPLAY),
            schedule_put: redis::Script::new(SCHEDULE_PUT),
            schedule_advance: redis::Script::new(SCHEDULE_ADVANCE),
            schedule_delete: redis::Script::new(SCHEDULE_DELETE),
        }
    }
}
