"""The Redis backend's Lua scripts, named after the operation: every change of task state is one
script (one round trip, atomic). Scripts share the helpers of their part (``_BASE`` for all,
``_TASKS``, ``_RESULTS``, ``_EVENTS``, ``_BLOBS``); ``SCRIPTS`` maps each name to its full source
and SHA1 for ``EVALSHA``. The key layout is in the package docstring."""

from __future__ import annotations

import hashlib

# ARGV[1] is always the key prefix; KEYS[1], when given, is the call's reply-cache key.

_BASE = r"""
local NS = ARGV[1]
local ONCE = KEYS[1]

-- a retried call that already ran returns what the first run returned
local function replay()
  if ONCE then
    local c = redis.call('GET', ONCE)
    if c then return cmsgpack.unpack(c) end
  end
  return nil
end
local function remember(v)
  if ONCE then redis.call('SET', ONCE, cmsgpack.pack(v), 'PX', 60000) end
  return v
end
"""

_TASKS = r"""
local COUNTS = NS .. ':counts'
local QUEUES = NS .. ':queues'
local DUE = NS .. ':due'
local LEASES = NS .. ':leases'
local EXPIRY = NS .. ':expiry'
local DONE = NS .. ':done'
local KEYMAP = NS .. ':keys'
local RESULTS_HERE = false  -- the enqueue script sets it (see holds())
local WAKE = NS .. ':wake'
local FIELDS = {'b', 's', 'w', 'l', 'd', 'a', 'e', 'c', 'q'}

local function tkey(id) return NS .. ':t:' .. id end
local function rkey(q) return NS .. ':ready:' .. q end

local function count(q, s, n)
  local f = q .. '\31' .. s
  if redis.call('HINCRBY', COUNTS, f, n) <= 0 then redis.call('HDEL', COUNTS, f) end
end

-- oq.tasks() indexes: zsets of ids (score 0: ordered by id, i.e. by time) of every task, by
-- status and by queue and status. old = nil: a new task; new = nil: a purged one
local function index(id, q, old, new)
  if old then
    redis.call('ZREM', NS .. ':ix:s:' .. old, id)
    redis.call('ZREM', NS .. ':ix:q:' .. q .. '\31' .. old, id)
  else
    redis.call('ZADD', NS .. ':ix:all', 0, id)
  end
  if new then
    redis.call('ZADD', NS .. ':ix:s:' .. new, 0, id)
    redis.call('ZADD', NS .. ':ix:q:' .. q .. '\31' .. new, 0, id)
  else
    redis.call('ZREM', NS .. ':ix:all', id)
  end
end

local function set_status(id, q, old, new)
  if old then count(q, old, -1) end
  count(q, new, 1)
  index(id, q, old, new)
  redis.call('HSET', tkey(id), 's', new)
end

local function push_ready(q, o, m)
  redis.call('ZADD', rkey(q), o, m)
  redis.call('SADD', QUEUES, q)
end

local function pull_ready(q, m)
  local key = rkey(q)
  redis.call('ZREM', key, m)
  if redis.call('ZCARD', key) == 0 then redis.call('SREM', QUEUES, q) end
end

-- QUEUED now, or PENDING until a future eta; wakes waiters either way (with the eta)
local function make_ready(id, old, now, eta, q, o, m)
  if not eta or tonumber(eta) <= tonumber(now) then
    set_status(id, q, old, 'queued')
    push_ready(q, o, m)
    redis.call('PUBLISH', WAKE, '')
  else
    set_status(id, q, old, 'pending')
    redis.call('ZADD', DUE, eta, id)
    redis.call('PUBLISH', WAKE, eta)
  end
end

local function end_task(id, new, now)
  local key = tkey(id)
  local h = redis.call('HMGET', key, 's', 'q', 'm', 'x')
  local old, q = h[1], h[2]
  if old == 'queued' then pull_ready(q, h[3])
  elseif old == 'pending' then redis.call('ZREM', DUE, id)
  elseif old == 'running' then redis.call('ZREM', LEASES, id) end
  count(q, old, -1)
  count(q, new, 1)
  index(id, q, old, new)
  redis.call('HSET', key, 's', new, 'f', now)
  redis.call('HDEL', key, 'l', 'k')
  if h[4] then redis.call('ZREM', EXPIRY, id) end
  redis.call('ZADD', DONE, now, id)
end

local function task_fields(id, out)
  local h = redis.call('HMGET', tkey(id), unpack(FIELDS))
  for i = 1, #FIELDS do out[#out + 1] = h[i] end
  out[#out + 1] = id  -- names the task when its record 'b' does not decode
end

-- the cancelled part of a finish or reap reply: their count, then (cause, fields...) each
local function cancelled_fields(cancelled, out)
  out[#out + 1] = #cancelled
  for _, p in ipairs(cancelled) do
    out[#out + 1] = p[2]
    task_fields(p[1], out)
  end
end

-- release or cancel (transitively) the dependents of tasks that just became final
local function resolve(ids, now, released, cancelled)
  local stack = {}
  for i = #ids, 1, -1 do stack[#stack + 1] = ids[i] end
  while #stack > 0 do
    local dep = table.remove(stack)
    local dkey = NS .. ':deps:' .. dep
    local children = redis.call('LRANGE', dkey, 0, -1)
    if #children > 0 then
      redis.call('DEL', dkey)
      local ds = redis.call('HGET', tkey(dep), 's')
      for _, child in ipairs(children) do
        local h = redis.call('HMGET', tkey(child), 's', 'k', 'q', 'o', 'm', 'e')
        if h[1] == 'pending' and h[2] and tonumber(h[2]) > 0 then
          if ds == 'succeeded' then
            if redis.call('HINCRBY', tkey(child), 'k', -1) <= 0 then
              redis.call('HDEL', tkey(child), 'k')
              make_ready(child, 'pending', now, h[6], h[3], h[4], h[5])
              released[#released + 1] = child
            end
          elseif ds == 'failed' or ds == 'cancelled' or ds == 'expired' then
            end_task(child, 'cancelled', now)
            cancelled[#cancelled + 1] = {child, dep}
            stack[#stack + 1] = child
          end
        end
      end
    end
  end
end

-- does task ``id`` hold its idempotency key? Live or succeeded; once its record is gone, while
-- a SUCCEEDED result of it is stored here
local function holds(id)
  local s = redis.call('HGET', tkey(id), 's')
  if s and not (s == 'succeeded' and RESULTS_HERE) then
    return s == 'pending' or s == 'queued' or s == 'running' or s == 'succeeded'
  end
  local blob = redis.call('GET', NS .. ':r:' .. id)
  if not blob then return false end
  local ok, r = pcall(cmsgpack.unpack, blob)
  return ok and type(r) == 'table' and r['status'] == 'succeeded'
end

-- store a planned batch from ARGV[i..]: now, known dependency statuses (checked unchanged),
-- then per task: id q o status eta expires created max_deliveries deliveries attempts blob
-- key ('' none) n_waiting waiting-ids...  Checks everything before the first write (all or
-- nothing). A task whose key another task holds (P:keys: key -> latest task) is not stored;
-- the reply {'ok', id, holder id, ...} names them, and their dependents wait for the holder.
local function insert(i)
  local now = ARGV[i]; i = i + 1
  local nk = tonumber(ARGV[i]); i = i + 1
  for _ = 1, nk do
    if redis.call('HGET', tkey(ARGV[i]), 's') ~= ARGV[i + 1] then return {'stale'} end
    i = i + 2
  end
  local nt = tonumber(ARGV[i]); i = i + 1
  local first = i
  local dupof, inbatch, claimed = {}, {}, {}
  local reply = {'ok'}
  for _ = 1, nt do
    local id, k = ARGV[i], ARGV[i + 11]
    if redis.call('EXISTS', tkey(id)) == 1 then return {'exists', id} end
    if k ~= '' then
      local h = claimed[k]
      if not h then
        local cur = redis.call('HGET', KEYMAP, k)
        if cur and cur ~= id and holds(cur) then h = cur end
      end
      if h then
        dupof[id] = h
        reply[#reply + 1] = id
        reply[#reply + 1] = h
      else
        claimed[k] = id
      end
    end
    if not dupof[id] then inbatch[id] = true end
    i = i + 13 + tonumber(ARGV[i + 12])
  end
  local seq = redis.call('INCRBY', NS .. ':seq', nt) - nt
  local ready, due = false, nil
  i = first
  for _ = 1, nt do
    local id, q, o, st, eta, exp = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
    local k, nw = ARGV[i + 11], tonumber(ARGV[i + 12])
    if not dupof[id] then
      local waits = {}
      for j = 1, nw do
        local w = ARGV[i + 12 + j]
        local h = dupof[w]
        if not h then
          waits[#waits + 1] = w
        else  -- a duplicate's dependents wait for its holder, unless it succeeded
          local hs = redis.call('HGET', tkey(h), 's')
          if inbatch[h] or (hs and hs ~= 'succeeded') then waits[#waits + 1] = h end
        end
      end
      if nw > 0 and #waits == 0 and st == 'pending' then
        if eta == '' or tonumber(eta) <= tonumber(now) then st = 'queued' end
      end
      nw = #waits
      seq = seq + 1
      local m = string.format('%016d', seq) .. id
      local key = tkey(id)
      redis.call('HSET', key, 'b', ARGV[i + 10], 's', st, 'q', q, 'o', o, 'm', m, 'ca', ARGV[i + 6],
                 'md', ARGV[i + 7], 'd', ARGV[i + 8], 'a', ARGV[i + 9])
      if eta ~= '' then redis.call('HSET', key, 'e', eta) end
      if exp ~= '' then redis.call('HSET', key, 'x', exp) end
      if k ~= '' then
        redis.call('HSET', key, 'y', k)
        redis.call('HSET', KEYMAP, k, id)
      end
      count(q, st, 1)
      index(id, q, nil, st)
      if st == 'cancelled' then
        redis.call('HSET', key, 'f', now)
        redis.call('ZADD', DONE, now, id)
      else
        if exp ~= '' then redis.call('ZADD', EXPIRY, exp, id) end
        if st == 'queued' then
          push_ready(q, o, m)
          ready = true
        elseif nw > 0 then
          redis.call('HSET', key, 'k', nw)
          for j = 1, nw do redis.call('RPUSH', NS .. ':deps:' .. waits[j], id) end
        else
          redis.call('ZADD', DUE, eta, id)
          if not due or tonumber(eta) < tonumber(due) then due = eta end
        end
      end
    end
    i = i + 13 + tonumber(ARGV[i + 12])
  end
  if ready then redis.call('PUBLISH', WAKE, '') end
  if due then redis.call('PUBLISH', WAKE, due) end
  return reply
end
"""

# enqueue: ARGV[2] results_here ('1': a success holds its key only while its result is
# stored), ARGV[3..] as insert(). Reply {'ok', dups...} | {'exists', id} | {'stale'} (re-plan).
ENQUEUE = r"""
local c = replay()
if c then return c end
RESULTS_HERE = ARGV[2] == '1'
local r = insert(3)
if r[1] == 'ok' then remember(r) end
return r
"""

# claim: ARGV now worker lease_until limit n_queues (-1: all) queue... Promotes due tasks, then
# merges the ready zsets of the queues (priority, then seq) and leases up to ``limit``.
# Reply: {next_due or false, 8 fields per claimed task...}.
CLAIM = r"""
local now, worker, lease_until = ARGV[2], ARGV[3], ARGV[4]
local limit, nq = tonumber(ARGV[5]), tonumber(ARGV[6])
local function reply_for(ids, next_due)
  local out = {next_due}
  for _, id in ipairs(ids) do task_fields(id, out) end
  return out
end
local c = replay()
if c then
  local held = {}
  for _, id in ipairs(c) do
    local h = redis.call('HMGET', tkey(id), 's', 'w')
    if h[1] == 'running' and h[2] == worker then held[#held + 1] = id end
  end
  return reply_for(held, false)
end
local due = redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('ZREM', DUE, id)
  local h = redis.call('HMGET', tkey(id), 's', 'k', 'q', 'o', 'm')
  if h[1] == 'pending' and not h[2] then
    set_status(id, h[3], 'pending', 'queued')
    push_ready(h[3], h[4], h[5])
  end
end
local nd = redis.call('ZRANGE', DUE, 0, 0, 'WITHSCORES')
local next_due = nd[2] or false
local qs
if nq < 0 then
  qs = redis.call('SMEMBERS', QUEUES)
else
  qs = {}
  for j = 1, nq do qs[j] = ARGV[6 + j] end
end
local chunk = math.min(limit + 4, 1000)
local heads = {}
for _, q in ipairs(qs) do
  heads[#heads + 1] = {key = rkey(q), q = q, items = {}, pos = 1, off = 0, done = false, taken = {},
                       n = 0}
end
local function peek(h)
  if h.pos > #h.items then
    if h.done then return nil end
    h.items = redis.call('ZRANGE', h.key, h.off, h.off + chunk - 1, 'WITHSCORES')
    h.off = h.off + chunk
    h.pos = 1
    if #h.items < 2 * chunk then h.done = true end
    if #h.items == 0 then return nil end
  end
  return h.items[h.pos], tonumber(h.items[h.pos + 1])
end
local nowN = tonumber(now)
local claimed = {}
while #claimed < limit do
  local best, bm, bs, bseq = nil, nil, nil, nil
  for _, h in ipairs(heads) do
    local m, s = peek(h)
    if m then
      local seq = tonumber(string.sub(m, 1, 16))
      if not best or s < bs or (s == bs and seq < bseq) then best, bm, bs, bseq = h, m, s, seq end
    end
  end
  if not best then break end
  best.pos = best.pos + 2
  local id = string.sub(bm, 17)
  local h = redis.call('HMGET', tkey(id), 's', 'x')
  if h[1] ~= 'queued' then
    best.taken[#best.taken + 1] = bm  -- stale member: drop it
  elseif not h[2] or tonumber(h[2]) > nowN then
    best.taken[#best.taken + 1] = bm
    claimed[#claimed + 1] = id
    index(id, best.q, 'queued', 'running')
    best.n = best.n + 1
  end  -- expired but not yet ended: left for expire()
end
for _, h in ipairs(heads) do
  if h.n > 0 then
    count(h.q, 'queued', -h.n)
    count(h.q, 'running', h.n)
  end
  if #h.taken > 0 then
    for j = 1, #h.taken, 1000 do
      redis.call('ZREM', h.key, unpack(h.taken, j, math.min(j + 999, #h.taken)))
    end
    if redis.call('ZCARD', h.key) == 0 then redis.call('SREM', QUEUES, h.q) end
  end
end
for _, id in ipairs(claimed) do
  local key = tkey(id)
  redis.call('HSET', key, 's', 'running', 'w', worker, 'l', lease_until)
  redis.call('HINCRBY', key, 'd', 1)
  redis.call('ZADD', LEASES, lease_until, id)
end
if #claimed > 0 then remember(claimed) end
return reply_for(claimed, next_due)
"""

# finish: ARGV now worker n (id status)*. Reply {n_released, fields..., n_cancelled,
# (cause, fields...)...}.
FINISH = r"""
local c = replay()
if c then return c end
local now, worker, n = ARGV[2], ARGV[3], tonumber(ARGV[4])
local done = {}
for j = 0, n - 1 do
  local id, st = ARGV[5 + 2 * j], ARGV[6 + 2 * j]
  local h = redis.call('HMGET', tkey(id), 's', 'w')
  if h[1] == 'running' and h[2] == worker then
    end_task(id, st, now)
    done[#done + 1] = id
  end
end
local released, cancelled = {}, {}
resolve(done, now, released, cancelled)
local out = {#released}
for _, id in ipairs(released) do task_fields(id, out) end
cancelled_fields(cancelled, out)
if #released + #cancelled > 0 then remember(out) end
return out
"""

# retry: ARGV worker id eta attempts now(wall clock). Reply 1 when the worker held the task.
RETRY = r"""
local worker, id, eta, attempts, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local key = tkey(id)
local h = redis.call('HMGET', key, 's', 'w', 'q', 'o', 'm')
if h[1] ~= 'running' or h[2] ~= worker then return 0 end
redis.call('HDEL', key, 'w', 'l')
redis.call('HSET', key, 'a', attempts, 'e', eta)
redis.call('ZREM', LEASES, id)
make_ready(id, 'running', now, eta, h[3], h[4], h[5])
return 1
"""

# release: ARGV worker id... Reply: how many went back to QUEUED.
RELEASE = r"""
local worker, n = ARGV[2], 0
for j = 3, #ARGV do
  local id = ARGV[j]
  local key = tkey(id)
  local h = redis.call('HMGET', key, 's', 'w', 'q', 'o', 'm', 'd')
  if h[1] == 'running' and h[2] == worker then
    redis.call('HDEL', key, 'w', 'l')
    redis.call('HSET', key, 'd', math.max(tonumber(h[6]) - 1, 0))
    redis.call('ZREM', LEASES, id)
    set_status(id, h[3], 'running', 'queued')
    push_ready(h[3], h[4], h[5])
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', WAKE, '') end
return n
"""

# extend: ARGV worker lease_until id...
EXTEND = r"""
local worker, lease = ARGV[2], ARGV[3]
for j = 4, #ARGV do
  local id = ARGV[j]
  local h = redis.call('HMGET', tkey(id), 's', 'w')
  if h[1] == 'running' and h[2] == worker then
    redis.call('HSET', tkey(id), 'l', lease)
    redis.call('ZADD', LEASES, lease, id)
  end
end
return 0
"""

# reap: ARGV now. Reply {n_requeued, fields..., n_dead, fields..., n_cancelled, (cause, fields)...}.
REAP = r"""
local c = replay()
if c then return c end
local now = ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', LEASES, '-inf', '(' .. now)
local requeued, dead, cancelled, ended = {}, {}, {}, {}
for _, id in ipairs(ids) do
  local key = tkey(id)
  local h = redis.call('HMGET', key, 's', 'c', 'd', 'md', 'q', 'o', 'm')
  if h[1] ~= 'running' then
    redis.call('ZREM', LEASES, id)
  elseif h[2] == '1' then
    end_task(id, 'cancelled', now)
    cancelled[#cancelled + 1] = {id, id}
    ended[#ended + 1] = id
  elseif tonumber(h[3]) < tonumber(h[4]) then
    redis.call('HDEL', key, 'w', 'l')
    redis.call('ZREM', LEASES, id)
    set_status(id, h[5], 'running', 'queued')
    push_ready(h[5], h[6], h[7])
    requeued[#requeued + 1] = id
  else
    end_task(id, 'failed', now)
    dead[#dead + 1] = id
    ended[#ended + 1] = id
  end
end
resolve(ended, now, {}, cancelled)
if #requeued > 0 then redis.call('PUBLISH', WAKE, '') end
local out = {#requeued}
for _, id in ipairs(requeued) do task_fields(id, out) end
out[#out + 1] = #dead
for _, id in ipairs(dead) do task_fields(id, out) end
cancelled_fields(cancelled, out)
if #ids > 0 then remember(out) end
return out
"""

# expire: ARGV now. Reply: fields of the expired tasks, then of the dependents cancelled.
EXPIRE = r"""
local c = replay()
if c then return c end
local now = ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', now)
local expired = {}
for _, id in ipairs(ids) do
  local s = redis.call('HGET', tkey(id), 's')
  if s == 'queued' or s == 'pending' then
    end_task(id, 'expired', now)
    expired[#expired + 1] = id
  elseif s ~= 'running' then
    redis.call('ZREM', EXPIRY, id)
  end  -- running: its TTL matters again if it is requeued
end
local cancelled = {}
resolve(expired, now, {}, cancelled)
local out = {}
for _, id in ipairs(expired) do task_fields(id, out) end
for _, p in ipairs(cancelled) do task_fields(p[1], out) end
if #expired > 0 then remember(out) end
return out
"""

# cancel: ARGV now id... Reply: (id, status before)... plus (dependent, 'pending')...
CANCEL = r"""
local c = replay()
if c then return c end
local now = ARGV[2]
local out, ended = {}, {}
for j = 3, #ARGV do
  local id = ARGV[j]
  local s = redis.call('HGET', tkey(id), 's')
  if s then
    out[#out + 1] = id
    out[#out + 1] = s
    if s == 'queued' or s == 'pending' then
      end_task(id, 'cancelled', now)
      ended[#ended + 1] = id
    elseif s == 'running' then
      redis.call('HSET', tkey(id), 'c', '1')
    end
  end
end
local cancelled = {}
resolve(ended, now, {}, cancelled)
for _, p in ipairs(cancelled) do
  out[#out + 1] = p[1]
  out[#out + 1] = 'pending'
end
if #out > 0 then remember(out) end
return out
"""

# statuses: ARGV id... Reply: status or false per id.
STATUSES = r"""
local out = {}
for j = 2, #ARGV do out[j - 1] = redis.call('HGET', tkey(ARGV[j]), 's') end
return out
"""

# cancel_requests: ARGV id... Reply: the running ones asked to cancel.
CANCEL_REQUESTS = r"""
local out = {}
for j = 2, #ARGV do
  local h = redis.call('HMGET', tkey(ARGV[j]), 's', 'c')
  if h[1] == 'running' and h[2] == '1' then out[#out + 1] = ARGV[j] end
end
return out
"""

# oldest_queued: the oldest created_at among the heads of each priority level of each queue
# (FIFO keeps each level's head its oldest task). Reply: (queue, created_at)...
OLDEST_QUEUED = r"""
local out = {}
for _, q in ipairs(redis.call('SMEMBERS', QUEUES)) do
  local key, best, bestN = rkey(q), nil, nil
  local r = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  while #r > 0 do
    local ca = redis.call('HGET', tkey(string.sub(r[1], 17)), 'ca')
    if ca and (not best or tonumber(ca) < bestN) then best, bestN = ca, tonumber(ca) end
    r = redis.call('ZRANGEBYSCORE', key, '(' .. r[2], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  end
  if best then
    out[#out + 1] = q
    out[#out + 1] = best
  end
end
return out
"""

# purge: ARGV before limit offset status... (none: every final one). Looks at up to ``limit``
# final tasks finished before ``before`` (skipping ``offset`` of them: those of other statuses
# an earlier batch left) and deletes those of the statuses. Reply {n looked at, id deleted...}.
PURGE = r"""
local ids = redis.call('ZRANGEBYSCORE', DONE, '-inf', '(' .. ARGV[2], 'LIMIT', tonumber(ARGV[4]),
                       tonumber(ARGV[3]))
local wanted = nil
if #ARGV > 4 then
  wanted = {}
  for j = 5, #ARGV do wanted[ARGV[j]] = true end
end
local out = {#ids}
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', tkey(id), 's', 'q', 'y')
  if not (wanted and h[1] and not wanted[h[1]]) then
    out[#out + 1] = id
    if h[1] then
      count(h[2], h[1], -1)
      index(id, h[2], h[1], nil)
    end
    -- its key is free now, unless it succeeded (a stored result of it may still hold the key)
    if h[3] and h[1] ~= 'succeeded' and redis.call('HGET', KEYMAP, h[3]) == id then
      redis.call('HDEL', KEYMAP, h[3])
    end
    redis.call('DEL', tkey(id), NS .. ':deps:' .. id)
    redis.call('ZREM', DONE, id)
  end
end
return out
"""

# list_tasks: ARGV below ('' none) want index... (``ix:`` key suffixes). The newest ``want``
# ids below ``below`` of each index, merged. Reply {oldest id looked at (or false), task
# fields...} (ids whose record is gone are left out).
LIST_TASKS = r"""
local below, want = ARGV[2], tonumber(ARGV[3])
local top = '+'
if below ~= '' then top = '(' .. below end
local ids = {}
for j = 4, #ARGV do
  for _, id in ipairs(redis.call('ZREVRANGEBYLEX', NS .. ':ix:' .. ARGV[j], top, '-', 'LIMIT', 0, want)) do
    ids[#ids + 1] = id
  end
end
if #ARGV > 4 then table.sort(ids, function(a, b) return a > b end) end
local n = math.min(want, #ids)
local out = {false}
if #ids >= want then out[1] = ids[n] end
for j = 1, n do
  local h = redis.call('HMGET', tkey(ids[j]), unpack(FIELDS))
  if h[1] then
    for i = 1, #FIELDS do out[#out + 1] = h[i] end
    out[#out + 1] = ids[j]
  end
end
return out
"""

# index_tasks: ARGV id... Puts tasks stored before the ix: sets existed (an older OmniQ) into
# them, as they are now (idempotent; a task gone meanwhile is skipped).
INDEX_TASKS = r"""
for j = 2, #ARGV do
  local h = redis.call('HMGET', tkey(ARGV[j]), 's', 'q')
  if h[1] and h[2] then
    redis.call('ZADD', NS .. ':ix:all', 0, ARGV[j])
    redis.call('ZADD', NS .. ':ix:s:' .. h[1], 0, ARGV[j])
    redis.call('ZADD', NS .. ':ix:q:' .. h[2] .. '\31' .. h[1], 0, ARGV[j])
  end
end
return 0
"""

# requeue: ARGV id attempts blob ('' keep). A FAILED / CANCELLED / EXPIRED task becomes QUEUED
# (its lease, cancel request, eta, expiry, pending dependencies and finish time cleared,
# deliveries 0). Reply: its status before (false: unknown id).
REQUEUE = r"""
local id, attempts, blob = ARGV[2], ARGV[3], ARGV[4]
local key = tkey(id)
local h = redis.call('HMGET', key, 's', 'q', 'o', 'm')
local s = h[1]
if not s then return false end
if s ~= 'failed' and s ~= 'cancelled' and s ~= 'expired' then return s end
redis.call('HDEL', key, 'w', 'l', 'c', 'e', 'x', 'k', 'f')
redis.call('HSET', key, 'd', 0, 'a', attempts)
if blob ~= '' then redis.call('HSET', key, 'b', blob) end
redis.call('ZREM', DONE, id)
redis.call('ZREM', EXPIRY, id)
set_status(id, h[2], s, 'queued')
push_ready(h[2], h[3], h[4])
redis.call('PUBLISH', WAKE, '')
return s
"""

# put_schedule: ARGV id blob paused next_run last_run last_task_id ('' = None).
PUT_SCHEDULE = r"""
local id = ARGV[2]
local key = NS .. ':s:' .. id
redis.call('DEL', key)
redis.call('HSET', key, 'b', ARGV[3], 'p', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', key, 'nr', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', key, 'lr', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', key, 'lt', ARGV[7]) end
if not redis.call('ZSCORE', NS .. ':sched', id) then
  redis.call('ZADD', NS .. ':sched', redis.call('INCR', NS .. ':sched:seq'), id)
end
return 0
"""

# get_schedules: Reply (blob paused next_run last_run last_task_id)... in insertion order.
GET_SCHEDULES = r"""
local out = {}
for _, id in ipairs(redis.call('ZRANGE', NS .. ':sched', 0, -1)) do
  local h = redis.call('HMGET', NS .. ':s:' .. id, 'b', 'p', 'nr', 'lr', 'lt')
  if h[1] then
    for i = 1, 5 do out[#out + 1] = h[i] end
  end
end
return out
"""

# pause_schedule: ARGV id paused set_next_run next_run. Reply 1 when the schedule exists.
PAUSE_SCHEDULE = r"""
local key = NS .. ':s:' .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'p', ARGV[3])
if ARGV[4] == '1' then
  if ARGV[5] == '' then redis.call('HDEL', key, 'nr') else redis.call('HSET', key, 'nr', ARGV[5]) end
end
return 1
"""

# delete_schedule: ARGV id. Reply 1 when it existed.
DELETE_SCHEDULE = r"""
redis.call('DEL', NS .. ':s:' .. ARGV[2])
return redis.call('ZREM', NS .. ':sched', ARGV[2])
"""

# fire_schedule: ARGV id expected_next_run next_run now task_id, then insert() arguments from 7.
# Compare-and-set on the schedule's next_run and enqueue the task in one script.
FIRE_SCHEDULE = r"""
local c = replay()
if c then return c end
local key = NS .. ':s:' .. ARGV[2]
local h = redis.call('HMGET', key, 'b', 'p', 'nr')
if not h[1] or h[2] == '1' or not h[3] or tonumber(h[3]) ~= tonumber(ARGV[3]) then
  return {'lost'}
end
local r = insert(7)
if r[1] ~= 'ok' then return r end
if ARGV[4] == '' then redis.call('HDEL', key, 'nr') else redis.call('HSET', key, 'nr', ARGV[4]) end
redis.call('HSET', key, 'lr', ARGV[5], 'lt', ARGV[6])
return remember(r)
"""

# heartbeat: ARGV id blob last_heartbeat forget_before.
HEARTBEAT = r"""
local W, HB = NS .. ':workers', NS .. ':hb'
redis.call('HSET', W, ARGV[2], ARGV[3])
redis.call('ZADD', HB, ARGV[4], ARGV[2])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', HB, '-inf', '(' .. ARGV[5], 'LIMIT', 0, 100)) do
  redis.call('HDEL', W, id)
  redis.call('ZREM', HB, id)
end
return 0
"""

REMOVE_WORKER = r"""
redis.call('HDEL', NS .. ':workers', ARGV[2])
redis.call('ZREM', NS .. ':hb', ARGV[2])
return 0
"""

# results -------------------------------------------------------------------------------------
_RESULTS = r"""
local RKEYS, RKEYOF, REXP = NS .. ':rkeys', NS .. ':rkeyof', NS .. ':rexp'
local function rk(id) return NS .. ':r:' .. id end
local function unindex(id)
  local old = redis.call('HGET', RKEYOF, id)
  if old then
    redis.call('ZREM', RKEYS, old .. '\0' .. id)
    redis.call('HDEL', RKEYOF, id)
  end
  redis.call('ZREM', REXP, id)
end
"""

# put_results: ARGV n, then per result: id blob key ('' none, else '=' .. key) expires px_ms.
PUT_RESULTS = r"""
local n, i = tonumber(ARGV[2]), 3
for _ = 1, n do
  local id, blob, key, exp, px = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  unindex(id)
  if key ~= '' then
    key = string.sub(key, 2)
    redis.call('ZADD', RKEYS, 0, key .. '\0' .. id)
    redis.call('HSET', RKEYOF, id, key)
  end
  if exp ~= '' then redis.call('ZADD', REXP, exp, id) end
  if px ~= '' then
    redis.call('SET', rk(id), blob, 'PX', px)
  else
    redis.call('SET', rk(id), blob)
  end
  i = i + 5
end
return n
"""

# find_results: ARGV min max (ZRANGEBYLEX bounds). Reply: the blobs, in key order.
FIND_RESULTS = r"""
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYLEX', RKEYS, ARGV[2], ARGV[3])) do
  local id = string.match(m, '%z([^%z]*)$')
  local blob = id and redis.call('GET', rk(id))
  if blob then out[#out + 1] = blob end
end
return out
"""

# delete_results: ARGV id... Reply: how many existed.
DELETE_RESULTS = r"""
local n = 0
for j = 2, #ARGV do
  n = n + redis.call('DEL', rk(ARGV[j]))
  unindex(ARGV[j])
end
return n
"""

# purge_results: ARGV now. Reply: how many were still there (others expired on their own).
PURGE_RESULTS = r"""
local n = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', REXP, '-inf', ARGV[2])) do
  n = n + redis.call('DEL', rk(id))
  unindex(id)
end
return n
"""

# events --------------------------------------------------------------------------------------
_EVENTS = r"""
local EV, EVTASKS, LAST, SKEW = NS .. ':ev', NS .. ':ev:tasks', NS .. ':ev:last', NS .. ':ev:skew'
local function id_ms(id) return tonumber(string.match(id, '^(%d+)')) end
-- forget per-task lists whose events have all been trimmed off the stream
local function drop_trimmed()
  local first = redis.call('XRANGE', EV, '-', '+', 'COUNT', 1)
  local bound = '+inf'
  if #first > 0 then bound = '(' .. id_ms(first[1][1]) end
  for _, t in ipairs(redis.call('ZRANGEBYSCORE', EVTASKS, '-inf', bound, 'LIMIT', 0, 200)) do
    redis.call('DEL', NS .. ':ev:t:' .. t)
    redis.call('ZREM', EVTASKS, t)
  end
end
"""

# append_events: ARGV max_len per_task n, then per event: ms task_id blob.
APPEND_EVENTS = r"""
local c = replay()
if c then return c end
local cap, per_task, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local lms, lseq = 0, 0
local last = redis.call('GET', LAST)
if last then
  local a, b = string.match(last, '^(%d+)-(%d+)$')
  lms, lseq = tonumber(a), tonumber(b)
end
local skew = tonumber(redis.call('GET', SKEW) or '0')
local skew0 = skew
local i = 5
for _ = 1, n do
  local ms, t, blob = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
  if ms > lms then
    lms, lseq = ms, 0
  else
    if lms - ms > skew then skew = lms - ms end
    lseq = lseq + 1
  end
  local id = string.format('%d-%d', lms, lseq)
  redis.call('XADD', EV, 'MAXLEN', '~', cap, id, 'e', blob)
  local tk = NS .. ':ev:t:' .. t
  if redis.call('RPUSH', tk, id) > per_task then redis.call('LTRIM', tk, -per_task, -1) end
  redis.call('ZADD', EVTASKS, lms, t)
  i = i + 3
end
redis.call('SET', LAST, string.format('%d-%d', lms, lseq))
if skew > skew0 then redis.call('SET', SKEW, string.format('%d', skew)) end
redis.call('PUBLISH', NS .. ':evwake', '')
drop_trimmed()
return remember(n)
"""

# task_events: ARGV task_id. Reply: the blobs of the task's events still in the stream.
TASK_EVENTS = r"""
local out = {}
for _, id in ipairs(redis.call('LRANGE', NS .. ':ev:t:' .. ARGV[2], 0, -1)) do
  local r = redis.call('XRANGE', EV, id, id)
  if #r > 0 then out[#out + 1] = r[1][2][2] end
end
return out
"""

# purge_events: ARGV before before_ms. Trims ids below before_ms (all older), then checks the
# ids that may have run ahead of their timestamps (up to the skew). Reply: how many went.
PURGE_EVENTS = r"""
local before, bms = tonumber(ARGV[2]), tonumber(ARGV[3])
local n = redis.call('XTRIM', EV, 'MINID', string.format('%d', bms))
local skew = tonumber(redis.call('GET', SKEW) or '0')
if skew > 0 then
  local hi = string.format('%d', bms + skew)
  for _, e in ipairs(redis.call('XRANGE', EV, string.format('%d', bms), hi)) do
    local ok, ev = pcall(cmsgpack.unpack, e[2][2])
    if ok and type(ev) == 'table' and type(ev.timestamp) == 'number' and ev.timestamp < before then
      n = n + redis.call('XDEL', EV, e[1])
    end
  end
end
drop_trimmed()
return n
"""

# purge_task_events: ARGV before task_id... Deletes those tasks' events stamped before `before`
# (by their per-task lists of stream ids). Reply: how many went.
PURGE_TASK_EVENTS = r"""
local before, n = tonumber(ARGV[2]), 0
for i = 3, #ARGV do
  local tk = NS .. ':ev:t:' .. ARGV[i]
  local keep = {}
  for _, id in ipairs(redis.call('LRANGE', tk, 0, -1)) do
    local r = redis.call('XRANGE', EV, id, id)
    if #r > 0 then
      local ok, ev = pcall(cmsgpack.unpack, r[1][2][2])
      if ok and type(ev) == 'table' and type(ev.timestamp) == 'number' and ev.timestamp >= before then
        keep[#keep + 1] = id
      else
        n = n + redis.call('XDEL', EV, id)
      end
    end
  end
  redis.call('DEL', tk)
  if #keep > 0 then
    redis.call('RPUSH', tk, unpack(keep))
  else
    redis.call('ZREM', EVTASKS, ARGV[i])
  end
end
return n
"""

# blobs ---------------------------------------------------------------------------------------
_BLOBS = r"""
local BLOBS_AT, OWNED_AT = NS .. ':bc', NS .. ':bot'
local function bkey(d) return NS .. ':b:' .. d end
local function okey(d) return NS .. ':bo:' .. d end
local function own(d, owner, now)
  local prev = redis.call('HGET', okey(d), owner)
  if not prev or tonumber(prev) < tonumber(now) then
    redis.call('HSET', okey(d), owner, now)
    redis.call('ZADD', OWNED_AT, now, d .. owner)
  end
end
"""

# own_blobs: ARGV now owner digest... Records the owner first, then replies with the digests
# not stored: a sweep (one script too) can no longer take a blob this put found stored.
OWN_BLOBS = r"""
local now, owner, missing = ARGV[2], ARGV[3], {}
for i = 4, #ARGV do
  own(ARGV[i], owner, now)
  if redis.call('EXISTS', bkey(ARGV[i])) == 0 then missing[#missing + 1] = ARGV[i] end
end
return missing
"""

# store_blob: ARGV now digest data. Reply: 1 when stored, 0 when it was there already.
STORE_BLOB = r"""
if redis.call('SET', bkey(ARGV[3]), ARGV[4], 'NX') then
  redis.call('ZADD', BLOBS_AT, 'NX', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# commit_blob: ARGV now digest part_key. A large blob written in pieces to a key of its own
# becomes the blob in one step (or goes, when another writer's copy is there already).
COMMIT_BLOB = r"""
if redis.call('EXISTS', bkey(ARGV[3])) == 1 then
  redis.call('DEL', ARGV[4])
  return 0
end
redis.call('RENAME', ARGV[4], bkey(ARGV[3]))
redis.call('PERSIST', bkey(ARGV[3]))
redis.call('ZADD', BLOBS_AT, 'NX', ARGV[2], ARGV[3])
return 1
"""

BLOB_PIECE = 4 << 20  # bytes: larger blobs are sent in pieces of this size

# add_blob_owners: ARGV now n, then per owner: owner k digest_1 .. digest_k.
ADD_BLOB_OWNERS = r"""
local now, i = ARGV[2], 4
for _ = 1, tonumber(ARGV[3]) do
  local owner, k = ARGV[i], tonumber(ARGV[i + 1])
  for j = i + 2, i + 1 + k do own(ARGV[j], owner, now) end
  i = i + 2 + k
end
return 0
"""

# missing_blobs: ARGV digest... Reply: those not stored.
MISSING_BLOBS = r"""
local missing = {}
for i = 2, #ARGV do
  if redis.call('EXISTS', bkey(ARGV[i])) == 0 then missing[#missing + 1] = ARGV[i] end
end
return missing
"""

# sweep_blob_owners: ARGV before offset limit. Drops owners recorded before ``before`` that are
# neither an unfinished task nor a stored result. Reply: {rows looked at, rows dropped}.
SWEEP_BLOB_OWNERS = r"""
local rows = redis.call('ZRANGEBYSCORE', OWNED_AT, '-inf', '(' .. ARGV[2], 'LIMIT', ARGV[3], ARGV[4])
local dropped = 0
for _, m in ipairs(rows) do
  local d, owner = string.sub(m, 1, 64), string.sub(m, 65)
  local kind, id = string.sub(owner, 1, 2), string.sub(owner, 3)
  local alive = false
  if kind == 't:' then
    local s = redis.call('HGET', NS .. ':t:' .. id, 's')
    alive = s == 'pending' or s == 'queued' or s == 'running'
  elseif kind == 'r:' then
    alive = redis.call('EXISTS', NS .. ':r:' .. id) == 1
  end
  if not alive then
    redis.call('ZREM', OWNED_AT, m)
    redis.call('HDEL', okey(d), owner)
    dropped = dropped + 1
  end
end
return {#rows, dropped}
"""

# sweep_blobs: ARGV before offset limit. Deletes blobs created before ``before`` that no owner
# refers to. Reply: {blobs looked at, blobs deleted}.
SWEEP_BLOBS = r"""
local rows = redis.call('ZRANGEBYSCORE', BLOBS_AT, '-inf', '(' .. ARGV[2], 'LIMIT', ARGV[3], ARGV[4])
local gone = 0
for _, d in ipairs(rows) do
  if redis.call('EXISTS', okey(d)) == 0 then
    redis.call('DEL', bkey(d))
    redis.call('ZREM', BLOBS_AT, d)
    gone = gone + 1
  end
end
return {#rows, gone}
"""


class _Script:
    """A Lua script: its full source (preludes included) and SHA1, for ``EVALSHA``."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, *parts: str) -> None:
        self.name = name
        self.source = "".join((_BASE, *parts))
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


_TASK_SCRIPTS = {
    "enqueue": ENQUEUE, "claim": CLAIM, "finish": FINISH, "retry": RETRY, "release": RELEASE,
    "extend": EXTEND, "reap": REAP, "expire": EXPIRE, "cancel": CANCEL, "statuses": STATUSES,
    "cancel_requests": CANCEL_REQUESTS, "oldest_queued": OLDEST_QUEUED, "purge": PURGE,
    "list_tasks": LIST_TASKS, "requeue": REQUEUE, "index_tasks": INDEX_TASKS,
    "put_schedule": PUT_SCHEDULE, "get_schedules": GET_SCHEDULES,
    "pause_schedule": PAUSE_SCHEDULE, "delete_schedule": DELETE_SCHEDULE,
    "fire_schedule": FIRE_SCHEDULE, "heartbeat": HEARTBEAT, "remove_worker": REMOVE_WORKER,
}  # fmt: skip
_RESULT_SCRIPTS = {
    "put_results": PUT_RESULTS, "find_results": FIND_RESULTS,
    "delete_results": DELETE_RESULTS, "purge_results": PURGE_RESULTS,
}  # fmt: skip
_EVENT_SCRIPTS = {
    "append_events": APPEND_EVENTS, "task_events": TASK_EVENTS, "purge_events": PURGE_EVENTS,
    "purge_task_events": PURGE_TASK_EVENTS,
}
_BLOB_SCRIPTS = {
    "own_blobs": OWN_BLOBS, "store_blob": STORE_BLOB, "commit_blob": COMMIT_BLOB,
    "add_blob_owners": ADD_BLOB_OWNERS,
    "missing_blobs": MISSING_BLOBS, "sweep_blob_owners": SWEEP_BLOB_OWNERS,
    "sweep_blobs": SWEEP_BLOBS,
}  # fmt: skip
SCRIPTS: dict[str, _Script] = {
    **{n: _Script(n, _TASKS, body) for n, body in _TASK_SCRIPTS.items()},
    **{n: _Script(n, _RESULTS, body) for n, body in _RESULT_SCRIPTS.items()},
    **{n: _Script(n, _EVENTS, body) for n, body in _EVENT_SCRIPTS.items()},
    **{n: _Script(n, _BLOBS, body) for n, body in _BLOB_SCRIPTS.items()},
}
