-- Removes a stream consumer from its group if, at this instant, it holds nothing and has
-- been silent for long enough. Checked and done in one step: between a separate check and
-- XGROUP DELCONSUMER the consumer could read new entries, and deleting it then would drop
-- them from the pending list, where a crash could no longer be recovered from.
-- KEYS[1] stream. ARGV[1] group, ARGV[2] consumer, ARGV[3] minimum idle time in ms.
-- Returns 1 if the consumer was removed, else 0.
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, consumer in ipairs(consumers) do
  local fields = {}
  for i = 1, #consumer, 2 do
    fields[consumer[i]] = consumer[i + 1]
  end
  if fields['name'] == ARGV[2] then
    if fields['pending'] == 0 and fields['idle'] >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
