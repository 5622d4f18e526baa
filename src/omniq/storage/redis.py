"""Redis backend: task queue, result store and event store on one Redis server (``redis.asyncio``).

URL: ``redis://[[user]:password@]host[:port][/db][?prefix=omniq&max_events=1000000]``
(``rediss://`` for TLS). Every key starts with ``<prefix>:`` (default ``omniq``), so several
independent queues can share one server and ``SCAN MATCH <prefix>:*`` finds all of one.
``max_events`` caps the event stream (approximately, ``XADD MAXLEN ~``);
``reconnect_timeout`` (seconds, default 30) is how long an operation keeps retrying a lost
connection before it raises ``StorageError``. Other query parameters go to redis-py
(``socket_timeout``, ``max_connections``, ...).

Every change of task state is ONE Lua script (one round trip, atomic), named at the top of this
module; scripts share the helpers in ``_PRELUDE``. Keys (``P`` = prefix):

==========================  ===============================================================
``P:t:<id>``                hash: ``b`` msgpack Task as enqueued, plus the mutable state:
                            ``s`` status, ``w`` worker, ``l`` lease_until, ``d`` deliveries,
                            ``a`` attempts, ``e`` eta, ``c`` cancel requested, ``k`` number of
                            dependencies not yet succeeded, ``q`` queue, ``o`` -priority,
                            ``m`` ready-set member, ``x`` expires_at, ``ca`` created_at,
                            ``f`` finished_at, ``md`` max_deliveries, ``y`` idempotency key
``P:ready:<queue>``         zset of QUEUED tasks: score ``-priority``, member ``<seq:016d><id>``;
                            equal scores sort by member bytes, i.e. by ``seq`` (FIFO). Scores
                            stay exact (no ``priority * 2**40 + seq`` packing to overflow).
``P:queues``                set of queues whose ready zset is not empty
``P:due``                   zset of PENDING tasks waiting only for their eta (score eta)
``P:leases``                zset of RUNNING tasks (score lease_until)
``P:expiry``                zset of not-yet-final tasks with a TTL (score expires_at)
``P:done``                  zset of final tasks (score finished_at), for ``purge``
``P:deps:<id>``             list of tasks waiting for ``<id>``
``P:counts``                hash ``<queue>\\x1f<status>`` -> count, kept by the scripts
``P:keys``                  hash idempotency key -> the latest task stored with it; the
                            enqueue script decides duplicates and stores in one step
``P:once:<token>``          a write script's reply, kept 60 s (see "Reconnects")
``P:s:<id>``, ``P:sched``   schedules (hash: blob + mutable fields) and their order
``P:workers``, ``P:hb``     worker records and their last heartbeats
``P:r:<id>``                msgpack TaskResult (``PX`` TTL when it expires in the future)
``P:rkeys``, ``P:rkeyof``   result keys for ``find_results`` (lexicographic zset) and back
``P:rexp``                  zset of results with ``expires_at``, for ``purge_results``
``P:ev``                    events stream (``MAXLEN ~ max_events``)
``P:ev:t:<task id>``        list of the task's stream ids (``query_events(task_id=...)``)
``P:ev:tasks``, ``P:ev:*``  per-task lists by latest stream id (to drop trimmed ones); state
``P:b:<digest>``            a blob: its bytes as one string (``SET NX``: whole or absent)
``P:bc``                    zset of blobs (score created_at), for ``sweep_blobs``
``P:bo:<digest>``           hash owner -> recorded_at: who refers to the blob
``P:bot``                   zset of ``<digest><owner>`` (score recorded_at), for the sweep
==========================  ===============================================================

Times: every float travels as ``repr`` text and is stored as given, never formatted by Lua
(whose ``tostring`` keeps 14 digits). Lease and eta decisions use the caller's ``now``.

Events: stream ids are ``max(timestamp in ms, last id)`` so they never run backwards; an
event's id is therefore at or after its timestamp, and ``since`` reads the stream from
``since`` onwards only. How far ids ever ran ahead of timestamps (``P:ev:skew``) bounds the
extra range ``purge_events`` must look at, so purging stays exact.

Wake-ups: scripts that make work ready ``PUBLISH`` on ``P:wake`` (payload: the eta of newly
delayed work, or empty). One listener task per backend (started by the first
``wait_for_tasks``) wakes local waiters; ``notify`` still wakes them at once in-process.

Reconnects: a lost connection (server restart, ``CLIENT KILL``, network) is retried with
back-off for ``reconnect_timeout`` seconds, logging once when it is lost and once when it is
back. A write whose reply was lost may have run: write scripts carry a token, and a retried
call with the same token returns the first run's reply (kept 60 s in ``P:once:<token>``)
instead of running twice, so a retried enqueue is not "already exists", a retried claim does
not lease twice and a retried event append does not duplicate events.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import msgspec
import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..errors import ConfigError, StorageError
from ..logs import get_logger
from ..models import Schedule, Task, TaskEvent, TaskResult, TaskStatus
from ._codec import decoder, encode
from ._reconnect import Backoff
from .base import (
    EventStore,
    Finished,
    Overrun,
    Reaped,
    ResultStore,
    Signal,
    TaskQueue,
    WorkerInfo,
    check_claim,
    check_new_tasks,
    check_outcomes,
    masked,
    plan_enqueue,
    stand_in_task,
)
from .blobs import Blob, check_blobs, check_digests, check_owners, nbytes

log = get_logger("omniq.storage.redis")

DEFAULT_PREFIX = "omniq"
DEFAULT_MAX_EVENTS = 1_000_000
DEFAULT_RECONNECT_TIMEOUT = 30.0
#: Stream ids kept per task for ``query_events(task_id=...)`` (lifecycle events are a handful).
MAX_TASK_EVENTS = 1_000
#: Worker records whose last heartbeat is this much older than a new one are forgotten.
FORGET_WORKERS_AFTER = 86_400.0
#: Tasks removed per ``purge`` script call (each call holds the server briefly).
PURGE_BATCH = 1_000
#: Owner records and blobs looked at per ``sweep_blobs`` script call.
SWEEP_BATCH = 1_000

# --- Lua ------------------------------------------------------------------------------------------
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

local function set_status(id, q, old, new)
  if old then count(q, old, -1) end
  count(q, new, 1)
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
out[#out + 1] = #cancelled
for _, p in ipairs(cancelled) do
  out[#out + 1] = p[2]
  task_fields(p[1], out)
end
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
out[#out + 1] = #cancelled
for _, p in ipairs(cancelled) do
  out[#out + 1] = p[2]
  task_fields(p[1], out)
end
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

# purge: ARGV before limit. Reply: how many final tasks were deleted.
PURGE = r"""
local ids = redis.call('ZRANGEBYSCORE', DONE, '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', tkey(id), 's', 'q', 'y')
  if h[1] then count(h[2], h[1], -1) end
  -- its key is free now, unless it succeeded (a stored result of it may still hold the key)
  if h[3] and h[1] ~= 'succeeded' and redis.call('HGET', KEYMAP, h[3]) == id then
    redis.call('HDEL', KEYMAP, h[3])
  end
  redis.call('DEL', tkey(id), NS .. ':deps:' .. id)
  redis.call('ZREM', DONE, id)
end
return #ids
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

# --- encoding -------------------------------------------------------------------------------------

_decode_task = decoder(Task).decode
_decode_result = decoder(TaskResult).decode
_decode_schedule = decoder(Schedule).decode
_decode_worker = decoder(WorkerInfo).decode
_decode_event = decoder(TaskEvent).decode
_STATUS = {s.value.encode(): s for s in TaskStatus}
_TASK_FIELDS = ("b", "s", "w", "l", "d", "a", "e", "c", "q")
_NF = len(_TASK_FIELDS) + 1  # then the task id
_COUNT_SEP = b"\x1f"


def _f(x: float | None) -> str:
    """A float as exact text for Redis and Lua ('' for None)."""
    return "" if x is None else repr(float(x))


def _task(v: Sequence[Any], i: int = 0) -> Task:
    """A Task from ``_TASK_FIELDS`` values and the id at ``v[i:]``: the blob, overlaid with the
    state. A blob that does not decode (any exception) becomes a stand-in that fails alone."""
    try:
        t = _decode_task(v[i])
    except Exception as exc:
        q = v[i + 8]
        t = stand_in_task(v[i + 9].decode(), exc, queue=q.decode() if q else "default")
    t.status = _STATUS[v[i + 1]]
    w = v[i + 2]
    t.worker = None if w is None else w.decode()
    lease = v[i + 3]
    t.lease_until = None if lease is None else float(lease)
    t.deliveries = int(v[i + 4])
    t.attempts = int(v[i + 5])
    eta = v[i + 6]
    t.eta = None if eta is None else float(eta)
    t.cancel_requested = v[i + 7] == b"1"
    return t


def _tasks(v: Sequence[Any], start: int, n: int) -> tuple[list[Task], int]:
    """``n`` tasks from ``v[start:]``; returns them and the index after them."""
    return [_task(v, start + k * _NF) for k in range(n)], start + n * _NF


def _event_ms(ts: float) -> int:
    """An event's stream id time: its timestamp in whole ms (0 for nonsense times)."""
    if not math.isfinite(ts) or ts <= 0:
        return 0
    return min(int(ts * 1000), 2**62)


def _lex_bounds(prefix: str) -> tuple[bytes, bytes]:
    """``ZRANGEBYLEX`` bounds for members that start with ``prefix`` (bytewise, as Redis)."""
    if not prefix:
        return b"-", b"+"
    p = prefix.encode()
    end = p.rstrip(b"\xff")
    if not end:
        return b"[" + p, b"+"
    return b"[" + p, b"(" + end[:-1] + bytes([end[-1] + 1])


# --- URL ------------------------------------------------------------------------------------------

_OWN_OPTIONS = ("prefix", "max_events", "reconnect_timeout")
_BAD_PREFIX = re.compile(r"[\s*?\[\]\\]")


class RedisOptions(msgspec.Struct, frozen=True):
    """What ``parse_url`` found: the URL redis-py gets, and OmniQ's own options."""

    client_url: str
    prefix: str = DEFAULT_PREFIX
    max_events: int = DEFAULT_MAX_EVENTS
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT


def parse_url(url: str) -> RedisOptions:
    """Split OmniQ's query options (``prefix``, ``max_events``, ``reconnect_timeout``) off a
    ``redis://`` / ``rediss://`` URL; the rest is left for redis-py."""
    if not isinstance(url, str) or not url.lower().startswith(("redis://", "rediss://")):
        raise ConfigError(f"not a redis:// or rediss:// URL: {masked(str(url))!r}")
    parts = urlsplit(url)
    if parts.fragment:
        raise ConfigError(f"redis URL {masked(url)!r} has a '#fragment'; use ?prefix=... instead")
    rest: list[tuple[str, str]] = []
    own: dict[str, str] = {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in _OWN_OPTIONS:
            own[k] = v
        else:
            rest.append((k, v))
    prefix = own.get("prefix", DEFAULT_PREFIX)
    if not prefix or _BAD_PREFIX.search(prefix):
        raise ConfigError(
            f"redis URL {masked(url)!r}: prefix must be a non-empty key prefix without spaces or "
            f"glob characters (* ? [ ] \\), got {prefix!r}"
        )
    max_events = DEFAULT_MAX_EVENTS
    if "max_events" in own:
        try:
            max_events = int(own["max_events"])
        except ValueError:
            max_events = 0
        if max_events < 1:
            raise ConfigError(
                f"redis URL {masked(url)!r}: max_events must be a whole number >= 1, "
                f"got {own['max_events']!r}"
            )
    reconnect = DEFAULT_RECONNECT_TIMEOUT
    if "reconnect_timeout" in own:
        try:
            reconnect = float(own["reconnect_timeout"])
        except ValueError:
            reconnect = -1.0
        if not reconnect >= 0 or math.isinf(reconnect):
            raise ConfigError(
                f"redis URL {masked(url)!r}: reconnect_timeout must be seconds >= 0, "
                f"got {own['reconnect_timeout']!r}"
            )
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    return RedisOptions(client_url, prefix, max_events, reconnect)


def _cause(e: BaseException) -> str:
    """A connection failure in plain words."""
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 5:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    text = " ".join(str(x) for x in chain).lower()
    if isinstance(e, rex.AuthenticationError) or "auth" in text or "wrongpass" in text:
        return f"the server refused the credentials ({e})"
    if any(isinstance(x, ConnectionRefusedError) for x in chain) or "refused" in text:
        return "connection refused: is a Redis server listening there?"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "unknown host name"
    if isinstance(e, (rex.TimeoutError, TimeoutError)) or "timed out" in text or "timeout" in text:
        return "the server did not answer in time"
    if "closed by server" in text or "connection reset" in text:
        return "the server closed the connection"
    return str(e) or type(e).__name__


_RETRYABLE = (rex.ConnectionError, rex.TimeoutError, ConnectionError, OSError)


async def _aclose(obj: Any) -> None:
    """Close a client or pub/sub object (``aclose`` since redis-py 5.0.1, ``close`` before)."""
    closer = getattr(obj, "aclose", None) or obj.close
    with contextlib.suppress(Exception):
        await closer()


class RedisBackend(TaskQueue, ResultStore, EventStore):
    """Task queue, result store and event store in one Redis namespace (see module docstring)."""

    cross_process_wakeups = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0") -> None:
        super().__init__()
        self.url = url
        self.options = parse_url(url)
        self.prefix = self.options.prefix
        self._redis: aioredis.Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        self._events_appended = Signal()  # set by <prefix>:evwake messages
        self._next_due: float | None = None  # earliest eta of a delayed task, last we heard
        self._down_since: float | None = None  # monotonic time the connection was lost

    # --- lifecycle --------------------------------------------------------------------------
    async def _open(self) -> None:
        kwargs: dict[str, Any] = {"retry": Retry(NoBackoff(), 0)}  # we retry (and log) ourselves
        if "socket_connect_timeout" not in self.options.client_url:
            kwargs["socket_connect_timeout"] = 10.0
        try:
            client = aioredis.Redis.from_url(self.options.client_url, **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"redis URL {masked(self.url)!r}: {e} (OmniQ's own options: "
                + ", ".join(_OWN_OPTIONS) + ")"
            ) from e
        try:
            await client.ping()
        except (rex.RedisError, OSError) as e:
            await _aclose(client)
            raise StorageError(f"cannot connect to Redis at {masked(self.url)}: {_cause(e)}") from e
        self._redis = client

    async def _close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener
        client, self._redis = self._redis, None
        if client is not None:
            await _aclose(client)

    # --- calls ------------------------------------------------------------------------------
    async def _call(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run ``fn(client)``; retry a lost connection for ``reconnect_timeout`` seconds,
        logging once when it is lost and once when it is back; other errors -> StorageError."""
        backoff = Backoff(self.options.reconnect_timeout, first=0.02)
        while True:
            client = self._redis
            if client is None:
                raise StorageError(f"{masked(self.url)} is not connected: call connect() first")
            try:
                result = await fn(client)
            except rex.AuthenticationError as e:
                raise StorageError(f"Redis {masked(self.url)}: {_cause(e)}") from e
            except _RETRYABLE as e:
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    log.warning(
                        "lost the connection to Redis at %s (%s); reconnecting",
                        masked(self.url), _cause(e),
                    )
                    with contextlib.suppress(Exception):
                        await client.connection_pool.disconnect(inuse_connections=False)
                if backoff.expired():
                    raise StorageError(
                        f"Redis {masked(self.url)}: {_cause(e)}; gave up reconnecting after "
                        f"{self.options.reconnect_timeout:g} s"
                    ) from e
                await anyio.sleep(backoff.pause())
                continue
            except rex.ResponseError as e:
                raise StorageError(f"Redis {masked(self.url)}: {e}") from e
            except rex.RedisError as e:
                raise StorageError(f"Redis {masked(self.url)}: {e}") from e
            if self._down_since is not None:
                log.warning(
                    "reconnected to Redis at %s after %.2f s",
                    masked(self.url), time.monotonic() - self._down_since,
                )
                self._down_since = None
            return result

    async def _eval(self, name: str, args: Sequence[Any], *, once: bool = False) -> Any:
        """Run a named script. ``once``: a retried call returns the first run's reply."""
        script = SCRIPTS[name]
        keys = [f"{self.prefix}:once:{os.urandom(9).hex()}"] if once else []
        argv = [self.prefix, *args]

        async def run(r: Any) -> Any:
            try:
                return await r.evalsha(script.sha, len(keys), *keys, *argv)
            except rex.NoScriptError:
                await r.script_load(script.source)
                return await r.evalsha(script.sha, len(keys), *keys, *argv)

        return await self._call(run)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # --- tasks ------------------------------------------------------------------------------
    async def _insert(self, tasks: Sequence[Task], now: float, script: str, head: list[Any]) -> Any:
        """Plan and store a validated batch with ``script`` (``enqueue`` or ``fire_schedule``);
        re-plan when a dependency changed status in between (the script checks)."""
        deps = list(dict.fromkeys(d for t in tasks for d in t.depends_on))
        for _ in range(100):
            known: dict[str, TaskStatus] = {}
            if deps:
                known = await self.statuses(deps)
                plans = plan_enqueue(tasks, known)
            else:  # the common case, without the dependency planning
                plans = [
                    (TaskStatus.QUEUED if t.eta is None else t.status, []) for t in tasks
                ]
            args: list[Any] = [*head, _f(now), len(known)]
            for d, s in known.items():
                args += (d, s.value)
            args.append(len(tasks))
            for t, (status, waiting) in zip(tasks, plans):
                args += (
                    t.id, t.queue, str(-t.priority), status.value, _f(t.eta), _f(t.expires_at),
                    _f(t.created_at), t.max_deliveries, t.deliveries, t.attempts, encode(t),
                    t.key or "", len(waiting), *waiting,
                )  # fmt: skip
            reply = await self._eval(script, args, once=True)
            if reply[0] == b"stale":
                continue
            if reply[0] == b"exists":
                raise ConfigError(f"task id {reply[1].decode()!r} already exists")
            return reply
        raise StorageError(f"Redis {masked(self.url)}: dependencies kept changing during enqueue")

    async def enqueue(self, tasks: Sequence[Task]) -> dict[str, str]:
        check_new_tasks(tasks)
        if not tasks:
            return {}
        reply = await self._insert(tasks, time.time(), "enqueue", ["1" if self.results_here else "0"])
        ids = [x.decode() for x in reply[1:]]
        dups = dict(zip(ids[::2], ids[1::2]))
        self._woken([t for t in tasks if t.id not in dups] if dups else tasks)
        return dups

    def _woken(self, tasks: Sequence[Task]) -> None:
        """Wake local waiters at once (the published message wakes other processes)."""
        etas = [t.eta for t in tasks if t.eta is not None]
        if etas:
            eta = min(etas)
            if self._next_due is None or eta < self._next_due:
                self._next_due = eta
        self.notify()

    async def claim(
        self,
        worker: str,
        *,
        queues: Sequence[str] | None,
        limit: int,
        lease: float,
        now: float,
    ) -> list[Task]:
        names = check_claim(queues, limit, lease)
        if limit == 0 or names == []:
            return []
        qargs: list[Any] = [-1] if names is None else [len(names), *names]
        reply = await self._eval(
            "claim", [_f(now), worker, _f(now + lease), limit, *qargs], once=True
        )
        nd = reply[0]
        self._next_due = None if nd is None else float(nd)
        return [_task(reply, i) for i in range(1, len(reply), _NF)]

    async def finish(
        self, worker: str, outcomes: Sequence[tuple[str, TaskStatus]], *, now: float
    ) -> Finished:
        check_outcomes(outcomes)
        if not outcomes:
            return Finished()
        args: list[Any] = [_f(now), worker, len(outcomes)]
        for task_id, status in outcomes:
            args += (task_id, status.value)
        v = await self._eval("finish", args, once=True)
        released, i = _tasks(v, 1, int(v[0]))
        n = int(v[i])
        i += 1
        cancelled: list[tuple[Task, str]] = []
        for _ in range(n):
            cancelled.append((_task(v, i + 1), v[i].decode()))
            i += 1 + _NF
        if released:
            self.notify()
        return Finished(released=released, cancelled=cancelled)

    async def retry(self, worker: str, task_id: str, *, eta: float, attempts: int) -> None:
        now = time.time()  # retry has no ``now``: the wall clock decides, as in the others
        if await self._eval("retry", [worker, task_id, _f(eta), attempts, _f(now)]):
            if eta > now and (self._next_due is None or eta < self._next_due):
                self._next_due = eta
            self.notify()

    async def release(self, worker: str, task_ids: Sequence[str]) -> None:
        if task_ids and await self._eval("release", [worker, *task_ids]):
            self.notify()

    async def extend(self, worker: str, task_ids: Sequence[str], *, lease_until: float) -> None:
        if task_ids:
            await self._eval("extend", [worker, _f(lease_until), *task_ids])

    async def overrun(self, *, now: float, limit: int = 100) -> list[Overrun]:
        key = self._key("leases")
        pairs = await self._call(
            lambda r: r.zrangebyscore(key, "-inf", f"({_f(now)}", start=0, num=limit, withscores=True)
        )
        out = []
        for raw, lease_until in pairs:
            t = await self.get_task(raw.decode())
            if t is not None and t.status is TaskStatus.RUNNING:
                out.append(Overrun(task_id=t.id, queue=t.queue, worker=t.worker, lease_until=float(lease_until)))
        return out

    async def reap(self, *, now: float) -> Reaped:
        v = await self._eval("reap", [_f(now)], once=True)
        requeued, i = _tasks(v, 1, int(v[0]))
        dead, i = _tasks(v, i + 1, int(v[i]))
        n = int(v[i])
        i += 1
        cancelled: list[tuple[Task, str]] = []
        for _ in range(n):
            cancelled.append((_task(v, i + 1), v[i].decode()))
            i += 1 + _NF
        if requeued:
            self.notify()
        return Reaped(requeued=requeued, dead=dead, cancelled=cancelled)

    async def expire(self, *, now: float) -> list[Task]:
        v = await self._eval("expire", [_f(now)], once=True)
        return [_task(v, i) for i in range(0, len(v), _NF)]

    async def cancel(self, task_ids: Sequence[str], *, now: float) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        v = await self._eval("cancel", [_f(now), *dict.fromkeys(task_ids)], once=True)
        return {v[i].decode(): _STATUS[v[i + 1]] for i in range(0, len(v), 2)}

    async def get_task(self, task_id: str) -> Task | None:
        key = self._key("t", task_id)
        v = await self._call(lambda r: r.hmget(key, _TASK_FIELDS))
        v = [*v, task_id.encode()]
        return None if v[0] is None else _task(v)

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        ids = list(task_ids)
        v = await self._eval("statuses", ids)
        return {i: _STATUS[s] for i, s in zip(ids, v) if s is not None}

    async def cancel_requests(self, task_ids: Sequence[str]) -> list[str]:
        if not task_ids:
            return []
        return [i.decode() for i in await self._eval("cancel_requests", list(task_ids))]

    async def counts(self) -> dict[str, dict[str, int]]:
        key = self._key("counts")
        raw = await self._call(lambda r: r.hgetall(key))
        out: dict[str, dict[str, int]] = {}
        for field, n in raw.items():
            queue, _, status = field.rpartition(_COUNT_SEP)
            if int(n) > 0:
                out.setdefault(queue.decode(), {})[status.decode()] = int(n)
        return out

    async def oldest_queued(self) -> dict[str, float]:
        v = await self._eval("oldest_queued", [])
        return {v[i].decode(): float(v[i + 1]) for i in range(0, len(v), 2)}

    async def purge(self, *, before: float) -> int:
        total = 0
        while True:
            n = int(await self._eval("purge", [_f(before), PURGE_BATCH]))
            total += n
            if n < PURGE_BATCH:
                return total

    # --- schedules --------------------------------------------------------------------------
    async def add_schedule(self, schedule: Schedule) -> None:
        s = schedule
        await self._eval(
            "put_schedule",
            [s.id, encode(s), "1" if s.paused else "0", _f(s.next_run), _f(s.last_run),
             s.last_task_id or ""],
        )  # fmt: skip

    async def get_schedules(self) -> list[Schedule]:
        v = await self._eval("get_schedules", [])
        out: list[Schedule] = []
        for i in range(0, len(v), 5):
            s = _decode_schedule(v[i])
            s.paused = v[i + 1] == b"1"
            s.next_run = None if v[i + 2] is None else float(v[i + 2])
            s.last_run = None if v[i + 3] is None else float(v[i + 3])
            s.last_task_id = None if v[i + 4] is None else v[i + 4].decode()
            out.append(s)
        return out

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, next_run: float | None
    ) -> bool:
        set_next = not paused or next_run is not None
        args = [schedule_id, "1" if paused else "0", "1" if set_next else "0", _f(next_run)]
        return bool(await self._eval("pause_schedule", args))

    async def delete_schedule(self, schedule_id: str) -> bool:
        return bool(await self._eval("delete_schedule", [schedule_id]))

    async def fire_schedule(
        self,
        schedule_id: str,
        *,
        expected_next_run: float,
        next_run: float | None,
        now: float,
        task: Task,
    ) -> bool:
        check_new_tasks([task])
        head = [schedule_id, _f(expected_next_run), _f(next_run), _f(now), task.id]
        reply = await self._insert([task], now, "fire_schedule", head)
        if reply[0] != b"ok":
            return False
        self._woken([task])
        return True

    # --- workers ----------------------------------------------------------------------------
    async def heartbeat(self, info: WorkerInfo) -> None:
        forget = info.last_heartbeat - FORGET_WORKERS_AFTER
        await self._eval(
            "heartbeat", [info.id, encode(info), _f(info.last_heartbeat), _f(forget)]
        )

    async def remove_worker(self, worker_id: str) -> None:
        await self._eval("remove_worker", [worker_id])

    async def workers(self) -> list[WorkerInfo]:
        key = self._key("workers")
        raw = await self._call(lambda r: r.hgetall(key))
        return sorted((_decode_worker(b) for b in raw.values()), key=lambda w: w.id)

    # --- wake-ups ---------------------------------------------------------------------------
    def _ensure_listener(self) -> None:
        if self._redis is not None and (self._listener is None or self._listener.done()):
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name=f"omniq-redis-wake:{self.prefix}"
            )

    async def wait_for_events(self, timeout: float) -> None:
        """Return when any process's ``append_events`` published on ``<prefix>:evwake``."""
        self._ensure_listener()
        await self._events_appended.wait(timeout)

    async def wait_for_tasks(self, timeout: float) -> None:
        """Return on ``notify``, on a wake-up published by any process, or when the earliest
        delayed task falls due (wall clock), at the latest after ``timeout``."""
        self._ensure_listener()
        if self._next_due is not None:
            timeout = min(timeout, max(self._next_due - time.time(), 0.0))
        await super().wait_for_tasks(timeout)

    async def _listen(self) -> None:
        """Turn messages on ``<prefix>:wake`` into local wake-ups; resubscribe when the
        connection drops (waiters fall back to their timeouts meanwhile)."""
        channel, events_channel = self._key("wake"), self._key("evwake")
        delay = 0.1
        lost_at: float | None = None
        while self._redis is not None:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel, events_channel)
                if lost_at is not None:
                    log.warning(
                        "wake-up channel on %s resubscribed after %.2f s",
                        masked(self.url), time.monotonic() - lost_at,
                    )
                    lost_at = None
                    self.notify()  # something may have been published meanwhile
                delay = 0.1
                async for msg in pubsub.listen():
                    if msg.get("channel") in (events_channel, events_channel.encode()):
                        self._events_appended.set()
                        continue
                    data = msg.get("data")
                    if data:
                        eta = float(data)
                        if self._next_due is None or eta < self._next_due:
                            self._next_due = eta
                    self._wakeup.set()
            except asyncio.CancelledError:
                raise
            except (rex.RedisError, OSError) as e:
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning(
                        "lost the wake-up channel on %s (%s); resubscribing",
                        masked(self.url), _cause(e),
                    )
            finally:
                await _aclose(pubsub)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # --- results ----------------------------------------------------------------------------
    async def put_results(self, results: Sequence[TaskResult]) -> None:
        args: list[Any] = [len(results)]
        wall = time.time()
        for r in results:
            if not isinstance(r, TaskResult):
                raise ConfigError(f"results must hold TaskResult, got {type(r).__name__}")
            px = ""
            if r.expires_at is not None and r.expires_at > wall:
                # Redis drops it by itself; purge_results cleans the index (and any result
                # whose expiry is not in the future on this clock, e.g. a test's fake clock)
                px = str(max(1, math.ceil((r.expires_at - wall) * 1000)))
            key = "" if r.key is None else "=" + r.key
            args += (r.task_id, encode(r), key, _f(r.expires_at), px)
        if results:
            await self._eval("put_results", args)

    async def get_result(self, task_id: str) -> TaskResult | None:
        key = self._key("r", task_id)
        blob = await self._call(lambda r: r.get(key))
        return None if blob is None else _decode_result(blob)

    async def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        if not task_ids:
            return {}
        keys = [self._key("r", i) for i in task_ids]
        blobs = await self._call(lambda r: r.mget(keys))
        return {i: _decode_result(b) for i, b in zip(task_ids, blobs) if b is not None}

    async def find_results(self, *, key_prefix: str) -> list[TaskResult]:
        if not isinstance(key_prefix, str):
            raise ConfigError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        lo, hi = _lex_bounds(key_prefix)
        found = [_decode_result(b) for b in await self._eval("find_results", [lo, hi])]
        return [r for r in found if r.key is not None and r.key.startswith(key_prefix)]

    async def delete_results(self, task_ids: Sequence[str]) -> int:
        if not task_ids:
            return 0
        return int(await self._eval("delete_results", list(task_ids)))

    async def purge_results(self, *, now: float) -> int:
        return int(await self._eval("purge_results", [_f(now)]))

    # --- events -----------------------------------------------------------------------------
    async def append_events(self, events: Sequence[TaskEvent]) -> None:
        args: list[Any] = [self.options.max_events, MAX_TASK_EVENTS, len(events)]
        for e in events:
            if not isinstance(e, TaskEvent):
                raise ConfigError(f"events must hold TaskEvent, got {type(e).__name__}")
            args += (_event_ms(e.timestamp), e.task_id, encode(e))
        if events:
            await self._eval("append_events", args, once=True)

    async def query_events(
        self,
        *,
        task_id: str | None = None,
        since: float | None = None,
        types: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[TaskEvent]:
        """``since`` is inclusive (``timestamp >= since``)."""
        if task_id is not None:
            events = [_decode_event(b) for b in await self._eval("task_events", [task_id])]
        else:
            events = await self._read_stream(None if since is None else _event_ms(since))
        if since is not None:
            events = [e for e in events if e.timestamp >= since]
        if types is not None:
            wanted = {str(t) for t in ([types] if isinstance(types, str) else types)}
            events = [e for e in events if e.type in wanted]
        events.sort(key=_timestamp)  # stable: ties keep append order
        return events if limit is None else events[: int(limit)]

    async def _read_stream(self, from_ms: int | None) -> list[TaskEvent]:
        """Every event whose stream id is at or after ``from_ms`` (all when None)."""
        key = self._key("ev")
        start = "-" if from_ms is None else str(from_ms)
        out: list[TaskEvent] = []
        while True:
            rows = await self._call(
                functools.partial(_xrange, key=key, start=start, count=10_000)
            )
            out.extend(_decode_event(fields[b"e"]) for _, fields in rows)
            if len(rows) < 10_000:
                return out
            start = "(" + rows[-1][0].decode()

    async def purge_events(self, *, before: float) -> int:
        return int(await self._eval("purge_events", [_f(before), _event_ms(before)]))


    # --- blobs -------------------------------------------------------------------------------
    async def put_blobs(self, blobs: Mapping[str, Blob], owner: str, *, now: float) -> int:
        """Owners first and the stored ones found in one script; then each missing blob in a
        script of its own (``SET NX``), so only those are sent."""
        given = check_blobs(blobs, owner)
        if not given:
            return 0
        missing = await self._eval("own_blobs", [_f(now), owner, *given])
        written = 0
        for raw in missing:
            d = raw.decode()
            data = given[d]
            if nbytes(data) > BLOB_PIECE:
                stored = await self._put_in_pieces(d, data, now)
            else:
                stored = await self._eval("store_blob", [_f(now), d, data])
            if stored:
                written += nbytes(data)
        return written

    async def _put_in_pieces(self, d: str, data: Blob, now: float) -> bool:
        """A large blob in pieces (SETRANGE: a retried piece lands in the same place) under a key
        of its own that expires, then made the blob in one step: no request holds the whole
        value (one would be copied whole into the client's buffers), and a crash midway leaves
        no blob."""
        view = memoryview(data).cast("B")
        part = self._key("bt", f"{d}:{os.urandom(6).hex()}")
        for off in range(0, len(view), BLOB_PIECE):
            piece = view[off : off + BLOB_PIECE]

            async def put(r: Any, o: int = off, p: memoryview = piece) -> Any:
                return await r.setrange(part, o, p)

            await self._call(put)
            if off == 0:
                await self._call(lambda r: r.pexpire(part, 3_600_000))
        return bool(await self._eval("commit_blob", [_f(now), d, part]))

    async def add_blob_owners(self, owners: Mapping[str, Sequence[str]], *, now: float) -> None:
        checked = {o: ds for o, ds in check_owners(owners).items() if ds}
        if not checked:
            return
        args: list[Any] = [_f(now), len(checked)]
        for o, ds in checked.items():
            args += (o, len(ds), *ds)
        await self._eval("add_blob_owners", args)

    async def get_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        ds = check_digests(digests)
        if not ds:
            return {}
        keys = [self._key("b", d) for d in ds]
        got = await self._call(lambda r: r.mget(keys))
        return {d: b for d, b in zip(ds, got, strict=True) if b is not None}

    async def missing_blobs(self, digests: Sequence[str]) -> set[str]:
        ds = check_digests(digests)
        if not ds:
            return set()
        return {raw.decode() for raw in await self._eval("missing_blobs", ds)}

    async def sweep_blobs(self, *, older_than: float) -> int:
        """Two passes of short scripts (``SWEEP_BATCH`` records each): dead owners, then blobs
        left without one."""
        before = _f(older_than)
        gone = 0
        for script in ("sweep_blob_owners", "sweep_blobs"):
            offset = 0
            while True:
                seen, removed = await self._eval(script, [before, offset, SWEEP_BATCH])
                offset += int(seen) - int(removed)  # what stays is skipped next time
                if script == "sweep_blobs":
                    gone += int(removed)
                if int(seen) < SWEEP_BATCH:
                    break
        return gone


async def _xrange(r: Any, *, key: str, start: str, count: int) -> Any:
    return await r.xrange(key, min=start, max="+", count=count)


def _timestamp(e: TaskEvent) -> float:
    return e.timestamp


__all__ = ["RedisBackend", "RedisOptions", "parse_url"]
