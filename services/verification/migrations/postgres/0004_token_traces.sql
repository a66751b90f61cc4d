-- The trace a verification link was issued in (a W3C traceparent: ids only, nothing secret),
-- so that following the link continues its signup's trace. Never part of the link itself.
ALTER TABLE verification_tokens ADD COLUMN trace_parent TEXT;
