#!lua
-- Helpers prepended to every script (after its shebang line).
--
-- Keys: every script gets KEYS[1] = P .. 'sched', where P is the partition's
-- key prefix with its hash tag (e.g. '{cv:3}:'). Every other key a script
-- touches is derived from P (task hashes popped from a queue, permits named
-- by a task), never from ARGV, so all of them hash to the declared slot and
-- the script is valid on Redis Cluster. The layout is in schema.rs.

local P = string.sub(KEYS[1], 1, #KEYS[1] - 5)

-- The store's clock, Unix ms: Redis' TIME, so that every replica compares
-- deadlines on one clock whatever its own says. Tests pass their virtual
-- time instead (`arg` not empty).
local function clock(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- As clock, in ms with the µs as a 3-digit fraction (a string, exact).
local function clock_us(arg)
  if arg ~= nil and arg ~= '' then return arg end
  local t = redis.call('TIME')
  local us = tonumber(t[2])
  return string.format('%d.%03d', tonumber(t[1]) * 1000 + math.floor(us / 1000), us % 1000)
end

-- An instant sent as '+N' (N ms after now) or 'N' (absolute).
local function instant(text, now)
  if string.sub(text, 1, 1) == '+' then return now + tonumber(string.sub(text, 2)) end
  return tonumber(text)
end

-- Puts a task in queue list qk (at the head when `head`) and marks the list
-- ready: the set rq holds every list that may be non-empty, so that a lease
-- visits only those, whatever number of queues and names a worker serves.
local function push(qk, id, head)
  redis.call(head and 'LPUSH' or 'RPUSH', P .. 'q:' .. qk, id)
  redis.call('SADD', P .. 'rq', qk)
end

-- Task events go only to the processes that wait on the task: field w
-- lists their event channels (set by the watch script), so unwatched tasks
-- cost no pub/sub traffic and a finished task's fields reach no process that
-- does not wait for it. `ev` (the shared events channel) only names the
-- ready channel beside it.
local function publish_to_watchers(w, message)
  for channel in string.gmatch(w, '%S+') do redis.call('PUBLISH', channel, message) end
end

local function notify(t, id, ev)
  local w = redis.call('HGET', t, 'w')
  if w then publish_to_watchers(w, id) end
end

-- A watched task that finished is sent along with its event, so that its
-- waiters need not read it: id, newline, then per field: name, space,
-- length, space, value.
local function notify_finished(t, id, ev)
  local w = redis.call('HGET', t, 'w')
  if not w then return end
  local h = redis.call('HGETALL', t)
  local parts = {id, '\n'}
  for i = 1, #h, 2 do
    parts[#parts + 1] = h[i] .. ' ' .. #h[i + 1] .. ' ' .. h[i + 1]
  end
  publish_to_watchers(w, table.concat(parts))
end

-- The ready channel sits beside the events channel (prefix..'ev').
local function ready_channel(ev)
  return string.sub(ev, 1, -3) .. 'rdy'
end

-- Gives back the task's concurrency permit, if it holds one, and moves the
-- first task waiting for that key back to the head of its queue.
local function free_permit_of(id, ck, ev)
  if not ck or redis.call('SREM', P .. 'cc:' .. ck, id) == 0 then return end
  local waiting = redis.call('LPOP', P .. 'cw:' .. ck)
  if not waiting then return end
  local qk = redis.call('HGET', P .. 't:' .. waiting, 'qk')
  if qk then
    push(qk, waiting, true)
    redis.call('PUBLISH', ready_channel(ev), qk)
  end
end

local function free_permit(t, id, ev)
  free_permit_of(id, redis.call('HGET', t, 'ck'), ev)
end

-- Takes a QUEUED task out of its queue or its concurrency waiting list.
local function unqueue(t, id, qk)
  if redis.call('LREM', P .. 'q:' .. qk, 1, id) == 0 then
    local ck = redis.call('HGET', t, 'ck')
    if ck then redis.call('LREM', P .. 'cw:' .. ck, 1, id) end
  end
end

-- g: the task's ck, ttl and w fields when the caller already read them;
-- oc: an outcome record to store with the final state. A task leaves the
-- dead letters when it finishes otherwise, and its dead letter entry goes
-- when its hash expires (see trim_dead).
local function finish(t, id, st, now, ev, g, oc)
  g = g or redis.call('HMGET', t, 'ck', 'ttl', 'w')
  free_permit_of(id, g[1], ev)
  if oc then
    redis.call('HSET', t, 'st', st, 'ua', now, 'fa', now, 'oc', oc)
  else
    redis.call('HSET', t, 'st', st, 'ua', now, 'fa', now)
  end
  -- Absent: the platform default (DEFAULT_TTL_MS, substituted at build).
  local ttl = tonumber(g[2] or 'DEFAULT_TTL_MS')
  if ttl and ttl > 0 then
    redis.call('PEXPIRE', t, ttl)
    -- The dead letter index is trimmed by the same deadline.
    if st == 6 then redis.call('ZADD', P .. 'dlx', tonumber(now) + ttl, id) end
  end
  if g[3] then notify_finished(t, id, ev) end
end

-- Drops dead letters whose task hash expired (up to 100 per call).
local function trim_dead(now)
  local gone = redis.call('ZRANGEBYSCORE', P .. 'dlx', '-inf', now, 'LIMIT', 0, 100)
  if #gone > 0 then
    redis.call('ZREM', P .. 'dlx', unpack(gone))
    redis.call('ZREM', P .. 'dlq', unpack(gone))
  end
end

local function release(sid, now, ev, rdy, out)
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
      free_permit(t, id, ev)
      redis.call('HSET', t, 'st', 2, 'ua', now)
      push(f[3], id, true)
      pushed[f[3]] = true
      notify(t, id, ev)
      out[#out + 1] = id
    end
  end
  redis.call('DEL', sl)
  redis.call('ZREM', P .. 'sess', sid)
  for qk, _ in pairs(pushed) do redis.call('PUBLISH', rdy, qk) end
end
