-- notify_old_keys: back to notifications without the keys before an update.

SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '10min';

DROP TRIGGER IF EXISTS notify_update ON "messages";
CREATE TRIGGER notify_update AFTER UPDATE ON "messages" REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION trigger_notify_change('conversation_id');

CREATE OR REPLACE FUNCTION trigger_notify_change()
RETURNS TRIGGER AS $$
DECLARE
  keys TEXT := '';
BEGIN
  FOR i IN 0 .. TG_NARGS - 1 LOOP
    keys := keys || format(', %L, %I', TG_ARGV[i], TG_ARGV[i]);
  END LOOP;
  EXECUTE format(
    'SELECT pg_notify(%L, json_build_object(''op'', %L, ''id'', id%s)::text) FROM changed_rows',
    'mandrake_' || TG_TABLE_NAME, lower(TG_OP), keys);
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;
