#!lua
-- ARGV: now (''=store clock), session, ttl ms. 1 when the session's leases
-- in this partition were extended to now + ttl, 0 when it holds none here.
local key = P .. 'sess'
if redis.call('ZSCORE', key, ARGV[2]) then
  redis.call('ZADD', key, clock(ARGV[1]) + tonumber(ARGV[3]), ARGV[2])
  return 1
end
return 0
