-- wrk script: pipelines DEPTH requests for PATH on every write.
-- Usage: wrk -s pipeline.lua URL -- DEPTH PATH
-- wrk counts each response (and each non-2xx one) separately.
init = function(args)
   local depth = tonumber(args[1]) or 16
   local path = args[2] or "/"
   local r = {}
   for i = 1, depth do
      r[i] = wrk.format(nil, path)
   end
   req = table.concat(r)
end

request = function()
   return req
end
