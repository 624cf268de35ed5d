#!lua
-- Versions before several concurrency keys per task parked a waiting task in
-- the list cw:<key>. Moves those tasks back to the head of their queues,
-- oldest first, where the current rules admit them afresh; run once per
-- such list when a store connects. ARGV: ev, key. Returns how many moved.
local ev, key = ARGV[1], ARGV[2]
local list = P .. 'cw:' .. key
local ids = redis.call('LRANGE', list, 0, -1)
redis.call('DEL', list)
local moved = 0
for j = #ids, 1, -1 do
  local f = redis.call('HMGET', P .. 't:' .. ids[j], 'st', 'qk')
  if f[1] == '2' and f[2] then
    push(f[2], ids[j], true)
    redis.call('PUBLISH', ready_channel(ev), f[2])
    moved = moved + 1
  end
end
return moved
