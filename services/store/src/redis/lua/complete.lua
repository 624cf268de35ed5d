#!lua
-- Records outcomes, fenced by session and lease token.
-- ARGV: now (ms.uuu, ''=store clock), ev, then per report: id, session,
-- token, kind (s succeeded, f failed, r retry), outcome record, retry delay
-- ms. Returns per report: the new state, or -1 not found, -2 stale token,
-- -3 not held.
local now, ev = clock_us(ARGV[1]), ARGV[2]
local now_ms = math.floor(tonumber(now))
local out = {}
for b = 3, #ARGV, 6 do
  local id, sid, kind = ARGV[b], ARGV[b + 1], ARGV[b + 3]
  local t = P .. 't:' .. id
  local f = redis.call('HMGET', t, 'st', 'ss', 'tk', 'fl', 'ck', 'ttl', 'w', 'cl', 'wf', 'wc')
  if not f[1] then
    out[#out + 1] = -1
  elseif tonumber(f[3] or '0') ~= tonumber(ARGV[b + 2]) then
    out[#out + 1] = -2
  elseif f[2] ~= sid or (f[1] ~= '3' and f[1] ~= '4') then
    out[#out + 1] = -3
  else
    redis.call('SREM', P .. 'sl:' .. sid, id)
    local g = {f[5], f[6], f[7], f[8], f[9]}
    -- A node finished by its worker has no root cause (wr) of its own.
    local known = f[9] and {f[10], ARGV[b + 4], false}
    if kind == 's' then
      finish(t, id, 5, now, ev, g, ARGV[b + 4], known)
      out[#out + 1] = 5
    else
      redis.call('HSET', t, 'oc', ARGV[b + 4], 'fl', tonumber(f[4] or '0') + 1)
      if kind == 'r' then
        local due = now_ms + tonumber(ARGV[b + 5])
        free_permits_of(id, f[5], f[8], ev)
        redis.call('HSET', t, 'st', 1, 'du', due, 'ua', now_ms)
        redis.call('ZADD', P .. 'sched', due, id)
        notify(t, id, ev)
        emit('R', t, id, now)
        out[#out + 1] = 1
      else
        finish(t, id, 6, now, ev, g, nil, known)
        redis.call('ZADD', P .. 'dlq', now, id)
        out[#out + 1] = 6
      end
    end
  end
end
wf_flush(ev)
return out
