#!lua
-- Schedules due on the store's clock, and claimed runs whose settling is
-- overdue (their replica died between claim and settle).
-- ARGV: now (''=store clock), limit. Returns {due count, then per due
-- schedule: record, version; then per overdue claim: id, fire ms}.
local now, limit = clock(ARGV[1]), ARGV[2]
local out = {0}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'schn', '-inf', now, 'LIMIT', 0, limit)) do
  local record = redis.call('HGET', P .. 'sch', id)
  if record then
    out[1] = out[1] + 1
    out[#out + 1] = record
    out[#out + 1] = redis.call('HGET', P .. 'schv', id) or '0'
  end
end
for _, claim in ipairs(redis.call('ZRANGEBYSCORE', P .. 'schp', '-inf', now, 'LIMIT', 0, limit)) do
  local id, fire = string.match(claim, '^(.*) (%-?%d+)$')
  out[#out + 1] = id
  out[#out + 1] = fire
end
return out
