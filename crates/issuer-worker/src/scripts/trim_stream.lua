-- Trims a coupon's stream to what its consumer group still needs, in one atomic step: a
-- worker's read cannot move the bounds between reading them and trimming.
-- KEYS[1] the stream. ARGV[1] the group. Keeps everything from the group's oldest pending
-- entry, or with none pending, from its last delivered entry (which marks where the group
-- stands). Returns how many entries went.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
local keep = pending[2]
if not keep then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local fields = {}
    for i = 1, #group, 2 do
      fields[group[i]] = group[i + 1]
    end
    if fields['name'] == ARGV[1] then
      keep = fields['last-delivered-id']
    end
  end
end
if not keep then
  return 0
end
return redis.call('XTRIM', KEYS[1], 'MINID', keep)
