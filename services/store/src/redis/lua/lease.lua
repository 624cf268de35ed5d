#!lua
-- Leases up to max QUEUED tasks of the given queue keys to a session.
-- ARGV: now (''=store clock), ttl ms, session, worker, max, ev, start,
-- queue keys... Returns per leased task: id, attempt, failures, token, spec,
-- workflow id ('' for none), its inputs ('' for none).
local now, ttl, sid, wk = clock(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local max, ev, start = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local out = {}
local got = 0
-- The lists to visit: the ready ones (rq) that this worker serves, of
-- queues that are not paused, by priority level. O(ready lists), not
-- O(queues x names x levels).
local serves = {}
for k = 8, #ARGV do serves[ARGV[k]] = true end
local paused = {}
for _, queue in ipairs(redis.call('SMEMBERS', P .. 'paused')) do paused[queue] = true end
local by_level = {}
for _, qk in ipairs(redis.call('SMEMBERS', P .. 'rq')) do
  local base, level = string.match(qk, '^(.*)#(%d)$')
  if not base then base, level = qk, '0' end
  if serves[base] and not paused[string.match(base, '^[^:]+')] then
    local list = by_level[level]
    if not list then list = {}; by_level[level] = list end
    list[#list + 1] = qk
  end
end
-- Admission: a rate-limited task takes the next slot of its bucket (GCRA);
-- a slot in the future parks it, SCHEDULED, until then with the slot kept.
-- A task needing a concurrency key without a free permit is parked (see
-- admit_keys). Returns whether the task may be leased now.
local function admit(t, id)
  local g = redis.call('HMGET', t, 'rb', 'ri', 'rs', 'ck', 'cl', 'cs')
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
  if g[4] then return admit_keys(t, id, g[4], g[5], g[6], ev) end
  return true
end
-- Priority levels, highest first; within a level, one task per list in
-- turn from a rotating start, so that no list starves the others.
for level = 9, 0, -1 do
  local lists = by_level[tostring(level)]
  if lists and got < max then
    table.sort(lists)
    local live = {}
    local n = #lists
    for j = 1, n do live[j] = lists[1 + ((start + j - 1) % n)] end
    while got < max and #live > 0 do
      local remaining = {}
      for _, qk in ipairs(live) do
        if got >= max then remaining[#remaining + 1] = qk else
          local id = redis.call('LPOP', P .. 'q:' .. qk)
          if not id then
            redis.call('SREM', P .. 'rq', qk)
          else
            remaining[#remaining + 1] = qk
            local t = P .. 't:' .. id
            -- One read for everything the common case needs.
            local f = redis.call('HMGET', t, 'st', 'at', 'fl', 'tk', 'ex', 'sp', 'w', 'rb', 'ck', 'pg', 'wf', 'wi', 'wm', 'wt')
            if f[1] == '2' then
              local ex = tonumber(f[5] or '0')
              if ex > 0 and ex <= now then
                finish(t, id, 8, now, ev)
              elseif (not f[8] and not f[9]) or admit(t, id) then
                local at, tk = tonumber(f[2] or '0') + 1, tonumber(f[4] or '0') + 1
                redis.call('HSET', t, 'st', 3, 'at', at, 'tk', tk, 'ss', sid, 'wk', wk, 'ua', now)
                if f[10] then redis.call('HDEL', t, 'pg') end
                -- The expiry entry stays: a task that comes back unstarted
                -- (lease lost, retry) still expires at its instant; promote
                -- skips the tasks that are leased or finished by then.
                redis.call('SADD', P .. 'sl:' .. sid, id)
                if f[7] then publish_to_watchers(f[7], id) end
                emit('L', t, id, now, qk, at, wk)
                out[#out + 1] = id; out[#out + 1] = at; out[#out + 1] = tonumber(f[3] or '0'); out[#out + 1] = tk
                out[#out + 1] = f[6]
                -- Workflow nodes: the workflow, then trigger and input digits
                -- before the inputs (decoded by codec.rs).
                out[#out + 1] = f[11] or ''
                out[#out + 1] = f[12] and ((f[14] or '1') .. (f[13] or '1') .. f[12]) or ''
                got = got + 1
              end
            end
          end
        end
      end
      live = remaining
    end
  end
end
if got > 0 then redis.call('ZADD', P .. 'sess', now + ttl, sid) end
wf_flush(ev)
return out
