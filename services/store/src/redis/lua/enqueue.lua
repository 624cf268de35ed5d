#!lua
-- Stores new tasks, QUEUED or SCHEDULED. Every argument was validated by
-- the caller (conveyor_core::validate) and nothing below can fail part-way:
-- the only conversions are of numbers the caller formatted.
-- ARGV: now (''=store clock), rdy, then per task: id, qk, spec, due
-- ('+N' relative or 'N'), expires (0: never), ttl, idempotency key,
-- idempotency ttl, rate bucket, rate interval ms, concurrency key,
-- concurrency limit. Returns per task: id, duplicate, state (0: the first
-- task's result is gone).
local now, rdy = clock(ARGV[1]), ARGV[2]
local out, pushed = {}, {}
for b = 3, #ARGV, 12 do
  local id, qk, ik = ARGV[b], ARGV[b + 1], ARGV[b + 6]
  local due = instant(ARGV[b + 3], now)
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
    local t = P .. 't:' .. id
    -- Only what differs from the defaults is written (attempt, failures and
    -- token 0; updated and due at creation; no expiry): small hashes stay in
    -- Redis' compact encoding.
    redis.call('HSET', t, 'st', st, 'qk', qk, 'sp', ARGV[b + 2])
    if ARGV[b + 5] ~= '' then redis.call('HSET', t, 'ttl', ARGV[b + 5]) end
    if st == 1 then redis.call('HSET', t, 'du', due) end
    if ARGV[b + 4] ~= '0' then
      redis.call('HSET', t, 'ex', ARGV[b + 4])
      redis.call('ZADD', P .. 'exp', ARGV[b + 4], id)
    end
    if ARGV[b + 8] ~= '' then redis.call('HSET', t, 'rb', ARGV[b + 8], 'ri', ARGV[b + 9]) end
    if ARGV[b + 10] ~= '' then redis.call('HSET', t, 'ck', ARGV[b + 10], 'cl', ARGV[b + 11]) end
    if st == 1 then
      redis.call('ZADD', P .. 'sched', due, id)
    else
      push(qk, id, false)
      pushed[qk] = true
    end
    emit('S', t, id, now, qk, 0)
    out[#out + 1] = id; out[#out + 1] = 0; out[#out + 1] = st
  end
end
for qk, _ in pairs(pushed) do redis.call('PUBLISH', rdy, qk) end
return out
