-- wrk script of `cargo xtask bench`, churn workload: every FAIL_EVERY-th
-- request goes to /fail (connection refused upstream, so a 502), the rest to
-- /churn. Both request strings are built once per thread.
local FAIL_EVERY = @FAIL_EVERY@
local ok_request, fail_request
local n = 0

function init(args)
    ok_request = wrk.format(nil, "/churn")
    fail_request = wrk.format(nil, "/fail")
end

function request()
    n = n + 1
    if n % FAIL_EVERY == 0 then
        return fail_request
    end
    return ok_request
end
