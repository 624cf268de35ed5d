#!lua
-- ARGV: now ('' for the store's clock), replica id, sessions ('' to
-- withdraw), ttl ms. Records the replica's session count until now + ttl,
-- drops every record past its time, and returns the live ones as
-- id, sessions, id, sessions...
local now, id, sessions, ttl = clock(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
if sessions == '' then
  redis.call('HDEL', P .. 'disp', id)
else
  redis.call('HSET', P .. 'disp', id, sessions .. ' ' .. (now + ttl))
end
local all = redis.call('HGETALL', P .. 'disp')
local live = {}
for i = 1, #all, 2 do
  local count, untl = string.match(all[i + 1], '^(%d+) (%d+)$')
  if count and tonumber(untl) > now then
    live[#live + 1] = all[i]
    live[#live + 1] = count
  else
    redis.call('HDEL', P .. 'disp', all[i])
  end
end
return live
