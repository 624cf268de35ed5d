#!lua
-- Schedules live in partition 0: HASH sch (id -> Schedule record), HASH
-- schv (id -> version, the conflict token), ZSET schn (id -> next run ms;
-- absent when paused or finished), LIST schr:<id> (runs, newest first),
-- ZSET schp ("id fire_ms" -> deadline of a claimed run not yet settled).
-- ARGV: id, schedule, next (-1: none), mode (create, replace), expected
-- version ('': any). Returns the new version, 0 when the mode's condition
-- fails (exists / missing), -1 on a version conflict.
local id, next = ARGV[1], tonumber(ARGV[3])
local exists = redis.call('HEXISTS', P .. 'sch', id) == 1
if ARGV[4] == 'create' and exists then return 0 end
if ARGV[4] == 'replace' and not exists then return 0 end
local version = tonumber(redis.call('HGET', P .. 'schv', id) or '0')
if ARGV[5] ~= '' and tonumber(ARGV[5]) ~= version then return -1 end
redis.call('HSET', P .. 'sch', id, ARGV[2])
redis.call('HSET', P .. 'schv', id, version + 1)
redis.call('ZREM', P .. 'schn', id)
if next >= 0 then redis.call('ZADD', P .. 'schn', next, id) end
return version + 1
