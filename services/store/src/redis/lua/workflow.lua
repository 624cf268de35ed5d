#!lua
-- Stores a workflow: its head and every node, in one partition, at once.
-- Nodes without parents are QUEUED (or SCHEDULED), the others WAITING (see
-- wf_after in common.lua for what happens next). Every argument was
-- validated by the caller (conveyor_core::workflow).
-- ARGV: now (''=store clock), rdy, ev, workflow id, head spec, head ttl,
-- graph record, idempotency key, idempotency ttl, then per node: id, qk,
-- spec, due ('+N' or 'N'), expires (0: never), ttl, rate bucket, rate
-- interval, concurrency keys, limits, parents, input, trigger, children,
-- delay once ready, index. Returns the workflow id and 1 when an earlier
-- workflow had the idempotency key (0 otherwise).
local now, rdy, ev, wid = clock(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local ik = ARGV[8]
if ik ~= '' then
  local existing = redis.call('GET', P .. 'idem:' .. ik)
  if existing then return {existing, 1} end
  redis.call('SET', P .. 'idem:' .. ik, wid, 'PX', ARGV[9])
end
local ids, queued, order = {}, {}, {}
for b = 10, #ARGV, 16 do
  local id, qk = ARGV[b], ARGV[b + 1]
  ids[#ids + 1] = id
  local t = P .. 't:' .. id
  local waiting = ARGV[b + 10] ~= '0'
  local st, due = 9, now
  if not waiting then
    due = instant(ARGV[b + 3], now)
    st = 2
    if due > now then st = 1 end
  end
  -- One HSET per node, with only the fields that differ from the defaults.
  local f = {'st', st, 'qk', qk, 'sp', ARGV[b + 2], 'wf', wid, 'wn', ARGV[b + 15]}
  local function add(name, value) f[#f + 1] = name; f[#f + 1] = value end
  if ARGV[b + 5] ~= '' then add('ttl', ARGV[b + 5]) end
  if ARGV[b + 4] ~= '0' then
    add('ex', ARGV[b + 4])
    redis.call('ZADD', P .. 'exp', ARGV[b + 4], id)
  end
  if ARGV[b + 6] ~= '' then add('rb', ARGV[b + 6]); add('ri', ARGV[b + 7]) end
  if ARGV[b + 8] ~= '' then add('ck', ARGV[b + 8]); add('cl', ARGV[b + 9]) end
  if ARGV[b + 13] ~= '' then add('wc', ARGV[b + 13]) end
  if waiting then
    add('wd', ARGV[b + 10]); add('wm', ARGV[b + 11]); add('wt', ARGV[b + 12])
    if ARGV[b + 14] ~= '' then add('wdl', ARGV[b + 14]) end
  elseif st == 1 then
    add('du', due)
    redis.call('ZADD', P .. 'sched', due, id)
  else
    local list = queued[qk]
    if not list then list = {}; queued[qk] = list; order[#order + 1] = qk end
    list[#list + 1] = id
  end
  redis.call('HSET', t, unpack(f))
  emit('S', t, id, now, qk, 0)
end
-- The roots enter their queues in node order, a thousand ids per RPUSH.
for _, qk in ipairs(order) do
  local list = queued[qk]
  for j = 1, #list, 1000 do
    redis.call('RPUSH', P .. 'q:' .. qk, unpack(list, j, math.min(j + 999, #list)))
  end
  redis.call('SADD', P .. 'rq', qk)
end
local wt = P .. 't:' .. wid
-- The graph and the node list live apart from the head, which waiters
-- read at every change: it stays a few small fields.
redis.call('HSET', wt, 'st', 9, 'sp', ARGV[5], 'wp', #ids, 'wnc', #ids)
redis.call('SET', P .. 'wg:' .. wid, ARGV[7])
redis.call('SET', P .. 'wl:' .. wid, table.concat(ids, ' '))
if ARGV[6] ~= '' then redis.call('HSET', wt, 'ttl', ARGV[6]) end
for _, qk in ipairs(order) do redis.call('PUBLISH', rdy, qk) end
return {wid, 0}
