-- The fence script as it was while every Redis write was one call per key (Pulse before its
-- writes were batched), every version kept beside its key in {KEY}:v: the reference that
-- tests/pulse/sinks/test_redis_sink.py holds the batched script (pulse/sinks/redis.py,
-- FENCE_SCRIPT) to, key by key, by what each key holds and its versions wherever they are
-- kept; and the writer of keys whose versions are all beside them.
--
-- Pulse's fenced write of one key (pulse/sinks/redis.py). KEYS[1]: the key; KEYS[2]: the
-- hash of its versions ({KEYS[1]}:v, in the same cluster slot). ARGV[1]: the kind of write,
-- ARGV[2]: the TTL in seconds, ARGV[3]: "1" to set both keys' TTLs (they are also set
-- whenever the write creates the key or a field). Then, by kind:
--   w  a window's hash: version, then field, value, ...; no field: remove the key and keep
--      the version (a tombstone, with the TTL);
--   f  a device's hash: per metric version, metric, value, metric:ts, time;
--   z  a sorted set: per member version, score, member.
-- A version is decimal integers joined by ":" ("inf" above every integer), compared in
-- order. A write (or a metric's, a member's) applies unless its version is older than the
-- one stored. Returns how many applied.
local key, versions = KEYS[1], KEYS[2]
local kind, ttl, refresh = ARGV[1], ARGV[2], ARGV[3] == "1"

-- -1, 0 or 1 as integer a is below, equal to or above integer b (exact at any size).
local function compare(a, b)
  if a == b then return 0 end
  if a == "inf" then return 1 end
  if b == "inf" then return -1 end
  local negative = a:sub(1, 1) == "-"
  if negative ~= (b:sub(1, 1) == "-") then return negative and -1 or 1 end
  local sign = 1
  if negative then a, b, sign = a:sub(2), b:sub(2), -1 end
  if #a ~= #b then return #a < #b and -sign or sign end
  for i = 1, #a, 15 do -- 15 digits are exact in a Lua number
    local x, y = tonumber(a:sub(i, i + 14)), tonumber(b:sub(i, i + 14))
    if x ~= y then return x < y and -sign or sign end
  end
  return 0
end

-- Whether version new is older than version old (false when there is none).
local function older(new, old)
  if not old then return false end
  local i, j = 1, 1
  while true do
    local new_end, old_end = new:find(":", i, true), old:find(":", j, true)
    local order = compare(new:sub(i, (new_end or 0) - 1), old:sub(j, (old_end or 0) - 1))
    if order ~= 0 then return order < 0 end
    if not new_end or not old_end then return old_end ~= nil end
    i, j = new_end + 1, old_end + 1
  end
end

local applied, created = 0, false
if kind == "w" then
  local version = ARGV[4]
  if older(version, redis.call("HGET", versions, "v")) then return 0 end
  created = redis.call("HSET", versions, "v", version) == 1
  if #ARGV == 4 then
    redis.call("DEL", key)
    redis.call("EXPIRE", versions, ttl)
    return 1
  end
  created = redis.call("HSET", key, unpack(ARGV, 5)) > 0 or created
  applied = 1
elseif kind == "f" then
  for i = 4, #ARGV, 5 do
    local version, field = ARGV[i], ARGV[i + 1]
    if not older(version, redis.call("HGET", versions, field)) then
      created = redis.call("HSET", versions, field, version) == 1 or created
      created = redis.call("HSET", key, field, ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]) > 0
        or created
      applied = applied + 1
    end
  end
elseif kind == "z" then
  for i = 4, #ARGV, 3 do
    local version, member = ARGV[i], ARGV[i + 2]
    if not older(version, redis.call("HGET", versions, member)) then
      created = redis.call("HSET", versions, member, version) == 1 or created
      created = redis.call("ZADD", key, ARGV[i + 1], member) == 1 or created
      applied = applied + 1
    end
  end
else
  return redis.error_reply("unknown kind of write: " .. tostring(kind))
end
if applied > 0 and (refresh or created) then
  redis.call("EXPIRE", key, ttl)
  redis.call("EXPIRE", versions, ttl)
end
return applied
