#!lua
-- Marks leased tasks RUNNING when the session and token still match.
-- ARGV: now (''=store clock), ev, then per report: id, session, token.
local now, ev = clock(ARGV[1]), ARGV[2]
for b = 3, #ARGV, 3 do
  local id = ARGV[b]
  local t = P .. 't:' .. id
  local f = redis.call('HMGET', t, 'st', 'ss', 'tk')
  if f[1] == '3' and f[2] == ARGV[b + 1] and tonumber(f[3] or '0') == tonumber(ARGV[b + 2]) then
    redis.call('HSET', t, 'st', 4, 'ua', now)
    notify(t, id, ev)
    emit('B', t, id, now)
  end
end
return 0
