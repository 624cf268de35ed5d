#!lua
-- Helpers prepended to every script (after its shebang line).
--
-- Keys: every script gets KEYS[1] = P .. 'sched', where P is the partition's
-- key prefix with its hash tag (e.g. '{cv:3}:'). Every other key a script
-- touches is derived from P (task hashes popped from a queue, permits named
-- by a task), never from ARGV, so all of them hash to the declared slot and
-- the script is valid on Redis Cluster. The layout is in schema.rs.

local P = string.sub(KEYS[1], 1, #KEYS[1] - 5)

-- The store's clock, Unix ms: Redis' TIME, so that every replica compares
-- deadlines on one clock whatever its own says. Tests pass their virtual
-- time instead (`arg` not empty).
local function clock(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- As clock, in ms with the µs as a 3-digit fraction (a string, exact).
local function clock_us(arg)
  if arg ~= nil and arg ~= '' then return arg end
  local t = redis.call('TIME')
  local us = tonumber(t[2])
  return string.format('%d.%03d', tonumber(t[1]) * 1000 + math.floor(us / 1000), us % 1000)
end

-- An instant sent as '+N' (N ms after now) or 'N' (absolute).
local function instant(text, now)
  if string.sub(text, 1, 1) == '+' then return now + tonumber(string.sub(text, 2)) end
  return tonumber(text)
end

-- Puts a task in queue list qk (at the head when `head`) and marks the list
-- ready: the set rq holds every list that may be non-empty, so that a lease
-- visits only those, whatever number of queues and names a worker serves.
local function push(qk, id, head)
  redis.call(head and 'LPUSH' or 'RPUSH', P .. 'q:' .. qk, id)
  redis.call('SADD', P .. 'rq', qk)
end

-- The event stream (WatchEvents; see stream.rs): while a watcher keeps
-- P..'evon' alive, every transition publishes one event on the
-- partition's channel P..'tev', in the order of the transitions. Otherwise the cost
-- is one EXISTS per script call that has something to say.
local EVON = nil
local function emit(kind, t, id, now, qk, at, wk)
  if EVON == nil then EVON = redis.call('EXISTS', P .. 'evon') == 1 end
  if not EVON then return end
  if qk == nil or at == nil then
    local f = redis.call('HMGET', t, 'qk', 'at')
    qk = qk or f[1] or ''
    at = at or f[2] or '0'
  end
  local sep = string.char(31)
  redis.call('PUBLISH', P .. 'tev', kind .. sep .. tostring(now) .. sep .. id .. sep .. qk .. sep .. tostring(at) .. sep .. (wk or ''))
end

-- Task events go only to the processes that wait on the task: field w
-- lists their event channels (set by the watch script), so unwatched tasks
-- cost no pub/sub traffic and a finished task's fields reach no process that
-- does not wait for it. `ev` (the shared events channel) only names the
-- ready channel beside it.
local function publish_to_watchers(w, message)
  for channel in string.gmatch(w, '%S+') do redis.call('PUBLISH', channel, message) end
end

local function notify(t, id, ev)
  local w = redis.call('HGET', t, 'w')
  if w then publish_to_watchers(w, id) end
end

-- A watched task that finished is sent along with its event, so that its
-- waiters need not read it: id, newline, then per field: name, space,
-- length, space, value.
local function notify_finished(t, id, ev)
  local w = redis.call('HGET', t, 'w')
  if not w then return end
  local h = redis.call('HGETALL', t)
  local parts = {id, '\n'}
  for i = 1, #h, 2 do
    parts[#parts + 1] = h[i] .. ' ' .. #h[i + 1] .. ' ' .. h[i + 1]
  end
  publish_to_watchers(w, table.concat(parts))
end

-- The ready channel sits beside the events channel (prefix..'ev').
local function ready_channel(ev)
  return string.sub(ev, 1, -3) .. 'rdy'
end

-- Concurrency keys (conveyor_core::concurrency has the policy; the memory
-- store mirrors every step). Per key K: cc:K holds the holders, cz:K the
-- parked tasks scored by park sequence, cr:K the reservation (r: task,
-- s: its sequence) and the overtake count (b). A task's keys are in its
-- ck field joined by '|', their limits in cl joined by ','; cs is its park
-- sequence, from the counter cseq.
local OVERTAKE_LIMIT, WAKE_WINDOW = CONC_OVERTAKE_LIMIT, CONC_WAKE_WINDOW

local function conc_of(ck, cl)
  local keys, limits = {}, {}
  if ck then
    for k in string.gmatch(ck, '[^|]+') do keys[#keys + 1] = k end
    for l in string.gmatch(cl or '', '[^,]+') do limits[#limits + 1] = tonumber(l) end
  end
  return keys, limits
end

-- Whether task id (park sequence seq, math.huge if never parked) would get
-- every permit now; promised counts permits promised earlier in a scan.
local function fits(id, seq, keys, limits, promised)
  for i, k in ipairs(keys) do
    local cc = P .. 'cc:' .. k
    if redis.call('SISMEMBER', cc, id) == 0 then
      local used = redis.call('SCARD', cc) + ((promised and promised[k]) or 0)
      local r = redis.call('HMGET', P .. 'cr:' .. k, 'r', 's')
      if r[1] and r[1] ~= id and tonumber(r[2]) < seq then used = used + 1 end
      if used >= limits[i] then return false end
    end
  end
  return true
end

-- Takes a parked task out of every line it is in.
local function leave_lines(id, keys)
  for _, k in ipairs(keys) do
    local z = P .. 'cz:' .. k
    if redis.call('ZREM', z, id) == 1 and redis.call('ZCARD', z) == 0 then
      redis.call('HDEL', P .. 'cr:' .. k, 'b')
    end
  end
end

-- Key k gained room: the tasks of its line (the first WAKE_WINDOW, oldest
-- first) that would be admitted now go back to the head of their queues, as
-- many as limit leaves room for.
local function wake(k, limit, ev)
  local room = limit - redis.call('SCARD', P .. 'cc:' .. k)
  if room <= 0 then return end
  local line = redis.call('ZRANGE', P .. 'cz:' .. k, 0, WAKE_WINDOW - 1)
  local promised, woken = {}, {}
  for _, w in ipairs(line) do
    local g = redis.call('HMGET', P .. 't:' .. w, 'ck', 'cl', 'cs', 'qk')
    local keys, limits = conc_of(g[1], g[2])
    if fits(w, tonumber(g[3]), keys, limits, promised) then
      for _, wk in ipairs(keys) do promised[wk] = (promised[wk] or 0) + 1 end
      leave_lines(w, keys)
      woken[#woken + 1] = w; woken[#woken + 1] = g[4]
      room = room - 1
      if room == 0 then break end
    end
  end
  -- The oldest ends up first.
  for j = #woken - 1, 1, -2 do
    push(woken[j + 1], woken[j], true)
    redis.call('PUBLISH', ready_channel(ev), woken[j + 1])
  end
end

-- Parks task id (hash t) in the line of each of its keys, then wakes
-- whoever its keys have room for: it may have been woken for a permit that
-- somebody else took, and others in a line may fit.
local function park(t, id, seq, keys, limits, ev)
  if not seq then
    seq = redis.call('INCR', P .. 'cseq')
    redis.call('HSET', t, 'cs', seq)
  end
  for _, k in ipairs(keys) do redis.call('ZADD', P .. 'cz:' .. k, seq, id) end
  for i, k in ipairs(keys) do wake(k, limits[i], ev) end
end

-- Admission of task id to its concurrency keys: all permits at once, or
-- parked. Counts the overtakes of each line's head; reserves a permit for
-- the head after OVERTAKE_LIMIT of them.
local function admit_keys(t, id, ck, cl, cs, ev)
  local keys, limits = conc_of(ck, cl)
  local seq = tonumber(cs) or math.huge
  if not fits(id, seq, keys, limits, nil) then
    park(t, id, tonumber(cs), keys, limits, ev)
    return false
  end
  for _, k in ipairs(keys) do
    redis.call('SADD', P .. 'cc:' .. k, id)
    local cr = P .. 'cr:' .. k
    local r = redis.call('HGET', cr, 'r')
    if r == id then
      redis.call('HDEL', cr, 'r', 's', 'b')
    else
      local head = redis.call('ZRANGE', P .. 'cz:' .. k, 0, 0, 'WITHSCORES')
      if head[1] and tonumber(head[2]) < seq then
        local b = redis.call('HINCRBY', cr, 'b', 1)
        if b >= OVERTAKE_LIMIT and not r then redis.call('HSET', cr, 'r', head[1], 's', head[2]) end
      end
    end
  end
  return true
end

-- Gives back every permit the task holds, then wakes the keys' lines.
local function free_permits_of(id, ck, cl, ev)
  if not ck then return end
  local keys, limits = conc_of(ck, cl)
  local freed = {}
  for i, k in ipairs(keys) do
    if redis.call('SREM', P .. 'cc:' .. k, id) == 1 then freed[#freed + 1] = i end
  end
  for _, i in ipairs(freed) do wake(keys[i], limits[i], ev) end
end

local function free_permits(t, id, ev)
  local g = redis.call('HMGET', t, 'ck', 'cl')
  free_permits_of(id, g[1], g[2], ev)
end

-- Drops the permits held back for a task that will not run now.
local function drop_reservations(id, ck, cl, ev)
  if not ck then return end
  local keys, limits = conc_of(ck, cl)
  for i, k in ipairs(keys) do
    local cr = P .. 'cr:' .. k
    if redis.call('HGET', cr, 'r') == id then
      redis.call('HDEL', cr, 'r', 's', 'b')
      wake(k, limits[i], ev)
    end
  end
end

-- Takes a QUEUED task out of its queue or out of the lines it is parked in.
local function unqueue(t, id, qk)
  if redis.call('LREM', P .. 'q:' .. qk, 1, id) == 0 then
    local g = redis.call('HMGET', t, 'ck', 'cl')
    if g[1] then leave_lines(id, (conc_of(g[1], g[2]))) end
  end
end

-- g: the task's ck, ttl, w, cl (and wf) fields when the caller already read them;
-- oc: an outcome record to store with the final state. A task leaves the
-- dead letters when it finishes otherwise, and its dead letter entry goes
-- when its hash expires (see trim_dead).
local function finish_task(t, id, st, now, ev, g, oc)
  g = g or redis.call('HMGET', t, 'ck', 'ttl', 'w', 'cl')
  free_permits_of(id, g[1], g[4], ev)
  drop_reservations(id, g[1], g[4], ev)
  if oc then
    redis.call('HSET', t, 'st', st, 'ua', now, 'fa', now, 'oc', oc)
  else
    redis.call('HSET', t, 'st', st, 'ua', now, 'fa', now)
  end
  -- Absent: the platform default (DEFAULT_TTL_MS, substituted at build).
  local ttl = tonumber(g[2] or 'DEFAULT_TTL_MS')
  if ttl and ttl > 0 then
    redis.call('PEXPIRE', t, ttl)
    -- The dead letter index is trimmed by the same deadline.
    if st == 6 then redis.call('ZADD', P .. 'dlx', tonumber(now) + ttl, id) end
  end
  if g[3] then notify_finished(t, id, ev) end
  if EVON ~= false then
    emit((st == 5 and 'D') or (st == 6 and 'F') or (st == 7 and 'C') or 'X', t, id, now)
  end
end

-- Workflows (conveyor_core::workflow has the rules; the memory store
-- mirrors every step). A node's hash adds wf (its workflow's id), wn (its
-- index), wc (its children, 'id:position' separated by spaces) and, while
-- WAITING, wd (parents not finished), wm (input: 1 none, 2 one, 3 list), wt
-- (trigger: 1 all succeeded, 2 all done, 3 on failure) and wdl (its delay
-- once ready, '+ms' or an instant). wa:<id> collects its inputs (position
-- -> parent id, state digit, outcome record) until it is ready; then wi
-- holds them in parent order, each as 'length:bytes'. A node that cannot
-- run keeps wx (the parent that failed) and wr (the root cause). The head
-- t:<workflow id> keeps wp (nodes unfinished), wfc (nodes failed), wcc
-- (nodes cancelled), wff (the first that failed or expired), wq
-- (cancelling) and wnc (node count, marking a head); its graph is wg:<id> and
-- its node ids wl:<id>, apart, so that the hash waiters read stays small.
-- A link_error callback that is not needed
-- is CANCELLED but not counted (0 in the work list).

-- What this script call knows of the workflow nodes and heads it touched:
-- a WAITING node's state, parents left and trigger (its wd is written back
-- once, by wf_flush), and per head the counts to add. A chord's callback,
-- met by every header outcome of one call, is read once per call.
local WF_NODES, WF_HEADS, WF_HEAD_LIST = {}, {}, {}

local function wf_node(ct, cid)
  local n = WF_NODES[cid]
  if not n then
    local c = redis.call('HMGET', ct, 'st', 'wd', 'wt')
    n = {st = c[1], left = tonumber(c[2] or '1'), trig = c[3], dirty = false}
    WF_NODES[cid] = n
  end
  return n
end

local function wf_head(wid, now)
  local h = WF_HEADS[wid]
  if not h then
    h = {
      finished = 0, failed = 0, cancelled = 0, first = nil, now = now,
      cancelling = redis.call('HEXISTS', P .. 't:' .. wid, 'wq') == 1,
    }
    WF_HEADS[wid] = h
    WF_HEAD_LIST[#WF_HEAD_LIST + 1] = wid
  end
  h.now = now
  return h
end

-- A WAITING node whose inputs are complete goes to its queue (or waits
-- its delay, SCHEDULED); cancelled instead while its workflow is.
local function wf_ready(ct, cid, now, ev, cancelling, work)
  local n = wf_node(ct, cid)
  n.dirty = false
  local wa = P .. 'wa:' .. cid
  if cancelling then
    n.st = '7'
    redis.call('DEL', wa)
    finish_task(ct, cid, 7, now, ev)
    work[#work + 1] = cid; work[#work + 1] = 7
    return
  end
  local h = redis.call('HGETALL', wa)
  if #h > 0 then
    -- Positions are parent indexes: walked in order, no sort needed.
    local at, last = {}, -1
    for j = 1, #h, 2 do
      local p = tonumber(h[j])
      at[p] = h[j + 1]
      if p > last then last = p end
    end
    local parts, k = {}, 0
    for p = 0, last do
      local v = at[p]
      if v then
        parts[k + 1] = #v; parts[k + 2] = ':'; parts[k + 3] = v
        k = k + 3
      end
    end
    redis.call('HSET', ct, 'wi', table.concat(parts))
    -- A chord's inputs may be many: freed off the main thread.
    redis.call('UNLINK', wa)
  end
  local g = redis.call('HMGET', ct, 'qk', 'wdl')
  redis.call('HDEL', ct, 'wd')
  local due = g[2] and instant(g[2], now) or now
  if due > now then
    n.st = '1'
    redis.call('HSET', ct, 'st', 1, 'du', due, 'ua', now)
    redis.call('ZADD', P .. 'sched', due, cid)
  else
    n.st = '2'
    redis.call('HSET', ct, 'st', 2, 'ua', now)
    push(g[1], cid, false)
    redis.call('PUBLISH', ready_channel(ev), g[1])
  end
  notify(ct, cid, ev)
  emit('Y', ct, cid, now, g[1])
end

-- Node id of workflow wid finished in state st: settles its children, and
-- theirs when they cannot run; the head's counters wait for wf_flush.
-- known: the finished node's children and outcome when the caller read
-- them (complete.lua), saving a read.
local function wf_after(id, st, now_text, ev, wid, known)
  local now = math.floor(tonumber(now_text))
  local head = wf_head(wid, now)
  local cancelling = head.cancelling
  local work = {id, st}
  local i = 1
  while i <= #work do
    local pid, pst = work[i], work[i + 1]
    -- A dependent settled here was WAITING: its inputs so far go.
    if i > 1 then redis.call('DEL', P .. 'wa:' .. pid) end
    i = i + 2
    head.finished = head.finished + 1
    local pf
    if i == 3 and known then
      pf = known
    else
      pf = redis.call('HMGET', P .. 't:' .. pid, 'wc', 'oc', 'wr')
    end
    local bad = pst == 6 or pst == 8
    if pst == 6 then head.failed = head.failed + 1 end
    if pst == 7 then head.cancelled = head.cancelled + 1 end
    if bad then head.first = head.first or pid end
    if pst == 0 then pst = 7 end
    if pf[1] then
      local root = pf[3] or pid
      for child in string.gmatch(pf[1], '%S+') do
        local cid, pos = string.match(child, '^(.+):(%d+)$')
        local ct = P .. 't:' .. cid
        local c = wf_node(ct, cid)
        if c.st == '9' then
          if c.trig == '3' then
            if bad then
              -- The failure that fired it: the root cause's.
              local entry = pid .. pst .. (pf[2] or '')
              if pf[3] then
                local r = redis.call('HMGET', P .. 't:' .. pf[3], 'st', 'oc')
                entry = pf[3] .. (r[1] or '6') .. (r[2] or '')
              end
              redis.call('DEL', P .. 'wa:' .. cid)
              redis.call('HSET', ct, 'wi', #entry .. ':' .. entry)
              wf_ready(ct, cid, now, ev, cancelling, work)
            elseif c.left <= 1 then
              -- Not needed: CANCELLED, but not a cancellation of the
              -- workflow's work (0 in the work list).
              c.st, c.dirty = '7', false
              finish_task(ct, cid, 7, now, ev)
              work[#work + 1] = cid; work[#work + 1] = 0
            else
              c.left, c.dirty = c.left - 1, true
            end
          elseif pst == 5 or c.trig == '2' then
            redis.call('HSET', P .. 'wa:' .. cid, pos, pid .. pst .. (pf[2] or ''))
            if c.left <= 1 then
              wf_ready(ct, cid, now, ev, cancelling, work)
            else
              c.left, c.dirty = c.left - 1, true
            end
          else
            local cst = bad and 6 or 7
            c.st, c.dirty = tostring(cst), false
            redis.call('HSET', ct, 'wx', pid, 'wr', root)
            finish_task(ct, cid, cst, now, ev)
            work[#work + 1] = cid; work[#work + 1] = cst
          end
        end
      end
    end
  end
end

-- Writes back what wf_after kept for the end of the call: WAITING nodes'
-- parents left, and each head's counters; a head whose last node finished
-- takes its final state. Every script that may finish a task calls it
-- last.
local function wf_flush(ev)
  for cid, n in pairs(WF_NODES) do
    if n.dirty then redis.call('HSET', P .. 't:' .. cid, 'wd', n.left) end
  end
  WF_NODES = {}
  for _, wid in ipairs(WF_HEAD_LIST) do
    local head = WF_HEADS[wid]
    local wt = P .. 't:' .. wid
    local now = head.now
    local unfinished = redis.call('HINCRBY', wt, 'wp', -head.finished)
    if head.failed > 0 then redis.call('HINCRBY', wt, 'wfc', head.failed) end
    if head.cancelled > 0 then redis.call('HINCRBY', wt, 'wcc', head.cancelled) end
    if head.first then redis.call('HSETNX', wt, 'wff', head.first) end
    if unfinished > 0 then
      notify(wt, wid, ev)
    else
      local h = redis.call('HMGET', wt, 'wq', 'wfc', 'ttl', 'w', 'wcc')
      local hst = (h[1] and 7) or ((tonumber(h[2] or '0') > 0) and 6)
        or ((tonumber(h[5] or '0') > 0) and 7) or 5
      redis.call('HSET', wt, 'st', hst, 'ua', now, 'fa', now)
      redis.call('DEL', P .. 'wl:' .. wid)
      local ttl = tonumber(h[3] or 'DEFAULT_TTL_MS')
      if ttl and ttl > 0 then
        redis.call('PEXPIRE', wt, ttl)
        redis.call('PEXPIRE', P .. 'wg:' .. wid, ttl)
      end
      if h[4] then notify_finished(wt, wid, ev) end
    end
  end
  WF_HEADS, WF_HEAD_LIST = {}, {}
end

-- g: as for finish_task, plus wf; known: see wf_after.
local function finish(t, id, st, now, ev, g, oc, known)
  g = g or redis.call('HMGET', t, 'ck', 'ttl', 'w', 'cl', 'wf')
  finish_task(t, id, st, now, ev, g, oc)
  if g[5] then wf_after(id, st, now, ev, g[5], known) end
end

-- Drops dead letters whose task hash expired (up to 100 per call).
local function trim_dead(now)
  local gone = redis.call('ZRANGEBYSCORE', P .. 'dlx', '-inf', now, 'LIMIT', 0, 100)
  if #gone > 0 then
    redis.call('ZREM', P .. 'dlx', unpack(gone))
    redis.call('ZREM', P .. 'dlq', unpack(gone))
  end
end

local function release(sid, now, ev, rdy, out)
  local sl = P .. 'sl:' .. sid
  local pushed = {}
  -- Ids are UUIDv7, ordered by submission: pushing the newest first to the
  -- head leaves the queue's head in submission order again.
  local ids = redis.call('SMEMBERS', sl)
  table.sort(ids, function(a, b) return a > b end)
  for _, id in ipairs(ids) do
    local t = P .. 't:' .. id
    local f = redis.call('HMGET', t, 'st', 'ss', 'qk')
    if (f[1] == '3' or f[1] == '4') and f[2] == sid then
      free_permits(t, id, ev)
      redis.call('HSET', t, 'st', 2, 'ua', now)
      push(f[3], id, true)
      pushed[f[3]] = true
      notify(t, id, ev)
      emit('Q', t, id, now, f[3])
      out[#out + 1] = id
    end
  end
  redis.call('DEL', sl)
  redis.call('ZREM', P .. 'sess', sid)
  for qk, _ in pairs(pushed) do redis.call('PUBLISH', rdy, qk) end
end
