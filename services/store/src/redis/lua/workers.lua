#!lua
-- ARGV: now ('' for the store's clock), replica id ('' to only read),
-- workers (an encoded ListWorkersResponse; '' with a replica id withdraws
-- it), ttl ms. Records the replica's workers until now + ttl in `wrk`
-- (`<alive until ms> <bytes>`), drops every record past its time, and
-- returns the live ones as id, bytes, id, bytes...
local now, id, workers, ttl = clock(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
if id ~= '' then
  if workers == '' then
    redis.call('HDEL', P .. 'wrk', id)
  else
    redis.call('HSET', P .. 'wrk', id, (now + ttl) .. ' ' .. workers)
  end
end
local all = redis.call('HGETALL', P .. 'wrk')
local live = {}
for i = 1, #all, 2 do
  local untl = string.match(all[i + 1], '^(%d+) ')
  if untl and tonumber(untl) > now then
    live[#live + 1] = all[i]
    live[#live + 1] = string.sub(all[i + 1], #untl + 2)
  else
    redis.call('HDEL', P .. 'wrk', all[i])
  end
end
return live
