#!lua
-- ARGV: id, the caller's event channel. The task's hash fields (none:
-- unknown), after adding the channel to the task's watchers (field w, at
-- most 16 channels): from now on its changes are published there.
local t = P .. 't:' .. ARGV[1]
if redis.call('EXISTS', t) == 0 then return {} end
local w = redis.call('HGET', t, 'w')
if not w then
  redis.call('HSET', t, 'w', ARGV[2])
elseif not string.find(' ' .. w .. ' ', ' ' .. ARGV[2] .. ' ', 1, true) then
  local count = select(2, string.gsub(w, '%S+', ''))
  if count >= 16 then
    -- The oldest watcher makes room (a process that restarted, most likely).
    w = string.gsub(w, '^%S+%s*', '')
  end
  redis.call('HSET', t, 'w', w .. ' ' .. ARGV[2])
end
return redis.call('HGETALL', t)
