-- Apply a batch of event-log entries to user state and item counters, atomically.
-- Each entry is applied at most once: done:<id> is set (with a TTL) in the same
-- script that applies it, so a redelivered entry is counted as a duplicate.
-- ARGV: prefix, history, seen, ttl_s, done_ttl_s, positive_watch_ms, bucket_s,
--       window_buckets, weights ("type=w,type=w"), then 6 per entry:
--       id, type, user, item, watch_ms ("" = none), ts_ms
-- Returns one status per entry: 1 applied, 0 duplicate, 2 skipped (user erased later).
local prefix = ARGV[1]
local hist_len = tonumber(ARGV[2])
local seen_max = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local done_ttl = tonumber(ARGV[5])
local positive_watch = tonumber(ARGV[6])
local bucket_s = tonumber(ARGV[7])
local window = tonumber(ARGV[8])
local weights = {}
for name, w in string.gmatch(ARGV[9], '(%w+)=([%d%.]+)') do weights[name] = tonumber(w) end

local function after(a, b)  -- is log id a later than log id b ("ms-seq")
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams > bms end
  return tonumber(aseq) > tonumber(bseq)
end

local status = {}
for i = 10, #ARGV, 6 do
  local id, kind, user, item = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local watch, ts = ARGV[i + 4], tonumber(ARGV[i + 5])
  if not redis.call('SET', prefix .. 'done:' .. id, '1', 'NX', 'EX', done_ttl) then
    status[#status + 1] = 0
  elseif kind == 'erase' then
    status[#status + 1] = 1  -- the gateway erased the state when it logged this entry
  else
    local erased = redis.call('GET', prefix .. 'u:' .. user .. ':erased')
    if erased and not after(id, erased) then
      status[#status + 1] = 2
    else
      local seen = prefix .. 'u:' .. user .. ':seen'
      redis.call('ZADD', seen, ts, item)
      redis.call('ZREMRANGEBYRANK', seen, 0, -(seen_max + 1))
      redis.call('EXPIRE', seen, ttl)
      local positive = kind == 'finish' or kind == 'like' or kind == 'share'
        or (kind == 'watch' and watch ~= '' and tonumber(watch) >= positive_watch)
      if positive then
        local hist = prefix .. 'u:' .. user .. ':hist'
        redis.call('LREM', hist, 0, item)
        redis.call('RPUSH', hist, item)
        redis.call('LTRIM', hist, -hist_len, -1)
        redis.call('EXPIRE', hist, ttl)
      end
      local bucket = math.floor(ts / 1000 / bucket_s)
      local keep = bucket_s * (window + 1)
      local counts = prefix .. 'ic:' .. bucket
      redis.call('HINCRBY', counts, item .. ':' .. kind, 1)
      redis.call('EXPIRE', counts, keep)
      local w = weights[kind]
      if w and w > 0 then
        local trend = prefix .. 'trend:' .. bucket
        redis.call('ZINCRBY', trend, w, item)
        redis.call('EXPIRE', trend, keep)
      end
      status[#status + 1] = 1
    end
  end
end
return status
