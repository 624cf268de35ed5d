#!lua
-- Releases sessions whose lease deadline passed on the store's clock.
-- ARGV: now (''=store clock), limit, ev, rdy. Returns the requeued ids.
local now = clock(ARGV[1])
local out = {}
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'sess', '-inf', now, 'LIMIT', 0, ARGV[2])) do
  release(sid, now, ARGV[3], ARGV[4], out)
end
return out
