#!lua
-- Settles a claimed run: records it in the history (once) and drops the
-- pending entry. ARGV: id, fire ms, run record ('': skipped run).
-- 1 when settled now, 0 when it was settled already.
local id = ARGV[1]
if redis.call('ZREM', P .. 'schp', id .. ' ' .. ARGV[2]) == 0 then return 0 end
if ARGV[3] ~= '' and redis.call('HEXISTS', P .. 'sch', id) == 1 then
  redis.call('LPUSH', P .. 'schr:' .. id, ARGV[3])
  redis.call('LTRIM', P .. 'schr:' .. id, 0, 99)
end
return 1
