#!lua
-- Stores a workflow: its head and every node, in one partition, at once.
-- Nodes without parents are QUEUED (or SCHEDULED), the others WAITING (see
-- wf_after in common.lua for what happens next). Every argument was
-- validated by the caller (conveyor_core::workflow).
-- ARGV: now (''=store clock), rdy, ev, workflow id, head spec, head ttl,
-- graph record, idempotency key, idempotency ttl, then 7 per node: id, qk,
-- spec, index, wait ('' for a root; else parents, input and trigger codes,
-- space-separated), children, extra ('' when every one is the default;
-- else, separated by \31: due '+N' or 'N', expires (0: never), ttl, rate
-- bucket, rate interval, concurrency keys, limits, delay once ready).
-- Returns the workflow id and 1 when an earlier workflow had the
-- idempotency key (0 otherwise).
local now, rdy, ev, wid = clock(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local ik = ARGV[8]
if ik ~= '' then
  local existing = redis.call('GET', P .. 'idem:' .. ik)
  if existing then return {existing, 1} end
  redis.call('SET', P .. 'idem:' .. ik, wid, 'PX', ARGV[9])
end
if EVON == nil then EVON = redis.call('EXISTS', P .. 'evon') == 1 end
local DEFAULTS = {'+0', '0', '', '', '0', '', '', ''}
local SEP = string.char(31)
local ids, queued, order = {}, {}, {}
for b = 10, #ARGV, 7 do
  local id, qk, wait = ARGV[b], ARGV[b + 1], ARGV[b + 4]
  ids[#ids + 1] = id
  local t = P .. 't:' .. id
  local x = DEFAULTS
  if ARGV[b + 6] ~= '' then
    x = {}
    for v in string.gmatch(ARGV[b + 6] .. SEP, '(.-)' .. SEP) do x[#x + 1] = v end
  end
  local st, due = 9, now
  if wait == '' then
    st = 2
    if x[1] ~= '+0' then
      due = instant(x[1], now)
      if due > now then st = 1 end
    end
  end
  -- One HSET per node, with only the fields that differ from the defaults.
  local f = {'st', st, 'qk', qk, 'sp', ARGV[b + 2], 'wf', wid, 'wn', ARGV[b + 3]}
  local n = 10
  if x[3] ~= '' then f[n + 1] = 'ttl'; f[n + 2] = x[3]; n = n + 2 end
  if x[2] ~= '0' then
    f[n + 1] = 'ex'; f[n + 2] = x[2]; n = n + 2
    redis.call('ZADD', P .. 'exp', x[2], id)
  end
  if x[4] ~= '' then f[n + 1] = 'rb'; f[n + 2] = x[4]; f[n + 3] = 'ri'; f[n + 4] = x[5]; n = n + 4 end
  if x[6] ~= '' then f[n + 1] = 'ck'; f[n + 2] = x[6]; f[n + 3] = 'cl'; f[n + 4] = x[7]; n = n + 4 end
  if ARGV[b + 5] ~= '' then f[n + 1] = 'wc'; f[n + 2] = ARGV[b + 5]; n = n + 2 end
  if st == 9 then
    local left, input, trigger = string.match(wait, '^(%d+) (%d) (%d)$')
    f[n + 1] = 'wd'; f[n + 2] = left; f[n + 3] = 'wm'; f[n + 4] = input
    f[n + 5] = 'wt'; f[n + 6] = trigger; n = n + 6
    if x[8] ~= '' then f[n + 1] = 'wdl'; f[n + 2] = x[8]; n = n + 2 end
  elseif st == 1 then
    f[n + 1] = 'du'; f[n + 2] = due; n = n + 2
    redis.call('ZADD', P .. 'sched', due, id)
  else
    local list = queued[qk]
    if not list then list = {}; queued[qk] = list; order[#order + 1] = qk end
    list[#list + 1] = id
  end
  redis.call('HSET', t, unpack(f))
  if EVON then emit('S', t, id, now, qk, 0) end
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
