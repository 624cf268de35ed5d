#!lua
-- Moves due SCHEDULED tasks to their queues, expires what expired, trims
-- dead letters whose tasks are gone.
-- ARGV: now (''=store clock), limit, ev, rdy. Returns promoted, expired,
-- ms until the next SCHEDULED task is due (-1: none).
local now, limit, ev, rdy = clock(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local promoted, expired, pushed = 0, 0, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'sched', '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', P .. 'sched', id)
  local t = P .. 't:' .. id
  local f = redis.call('HMGET', t, 'st', 'qk', 'ex')
  if f[1] == '1' then
    local ex = tonumber(f[3] or '0')
    if ex > 0 and ex <= now then
      finish(t, id, 8, now, ev)
      expired = expired + 1
    else
      redis.call('HSET', t, 'st', 2, 'ua', now)
      push(f[2], id, false)
      pushed[f[2]] = true
      notify(t, id, ev)
      promoted = promoted + 1
    end
  end
end
for qk, _ in pairs(pushed) do redis.call('PUBLISH', rdy, qk) end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', P .. 'exp', id)
  local t = P .. 't:' .. id
  local f = redis.call('HMGET', t, 'st', 'qk')
  if f[1] == '1' then
    redis.call('ZREM', P .. 'sched', id)
    finish(t, id, 8, now, ev)
    expired = expired + 1
  elseif f[1] == '2' then
    unqueue(t, id, f[2])
    finish(t, id, 8, now, ev)
    expired = expired + 1
  end
end
wf_flush(ev)
trim_dead(now)
local first = redis.call('ZRANGE', P .. 'sched', 0, 0, 'WITHSCORES')
local next_due = -1
if first[2] then next_due = math.max(0, tonumber(first[2]) - now) end
return {promoted, expired, next_due}
