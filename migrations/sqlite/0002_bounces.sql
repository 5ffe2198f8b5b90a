-- Hard bounces (SMTP 5xx with enhanced status 5.1.x): the address is suppressed until the user's
-- email changes. bounced_email is the address that bounced; a new traits.email lifts the
-- suppression because it no longer matches.
ALTER TABLE users ADD COLUMN email_bounced_at BIGINT;
ALTER TABLE users ADD COLUMN bounced_email TEXT;
