#!lua
-- Claims one run of a schedule before it is submitted: compare-and-set on
-- the version, and only when the run is still the schedule's next one, the
-- schedule is not paused, and the run is due on the store's clock. Stores
-- the advanced schedule and a pending entry that a replica settles after
-- submitting (or any replica retries once its deadline passes).
-- ARGV: id, expected version, fire ms, updated schedule, next (-1: none),
-- claim ttl ms, now (''=store clock). 1 claimed, 0 not.
local id, fire = ARGV[1], tonumber(ARGV[3])
local now = clock(ARGV[7])
local version = tonumber(redis.call('HGET', P .. 'schv', id) or '0')
if version ~= tonumber(ARGV[2]) then return 0 end
local score = redis.call('ZSCORE', P .. 'schn', id)
if not score or tonumber(score) ~= fire or fire > now then return 0 end
redis.call('HSET', P .. 'sch', id, ARGV[4])
redis.call('HSET', P .. 'schv', id, version + 1)
if tonumber(ARGV[5]) >= 0 then
  redis.call('ZADD', P .. 'schn', ARGV[5], id)
else
  redis.call('ZREM', P .. 'schn', id)
end
-- A run that will not be submitted (skipped) leaves no claim (ttl 0).
if tonumber(ARGV[6]) > 0 then
  redis.call('ZADD', P .. 'schp', now + tonumber(ARGV[6]), id .. ' ' .. ARGV[3])
end
return 1
