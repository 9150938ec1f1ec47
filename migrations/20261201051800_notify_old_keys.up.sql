-- notify_old_keys: written by hand, since the schema diff compares neither
-- trigger function bodies nor transition tables. An update's notification
-- also carries its keys before the update, so a subscriber whose filter the
-- row leaves hears of it (the trigger reads the OLD transition table too).

SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '10min';

CREATE OR REPLACE FUNCTION trigger_notify_change()
RETURNS TRIGGER AS $$
DECLARE
  keys TEXT := '';
  old_keys TEXT := '';
BEGIN
  FOR i IN 0 .. TG_NARGS - 1 LOOP
    keys := keys || format(', %L, n.%I', TG_ARGV[i], TG_ARGV[i]);
    old_keys := old_keys || format(', %L, o.%I', TG_ARGV[i], TG_ARGV[i]);
  END LOOP;
  IF TG_OP = 'UPDATE' AND TG_NARGS > 0 THEN
    EXECUTE format(
      'SELECT pg_notify(%L, json_build_object(''op'', ''update'', ''id'', n.id%s, ''old'', json_build_object(%s))::text) FROM changed_rows n JOIN old_rows o ON o.id = n.id',
      'mandrake_' || TG_TABLE_NAME, keys, substr(old_keys, 3));
  ELSE
    EXECUTE format(
      'SELECT pg_notify(%L, json_build_object(''op'', %L, ''id'', n.id%s)::text) FROM changed_rows n',
      'mandrake_' || TG_TABLE_NAME, lower(TG_OP), keys);
  END IF;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS notify_update ON "messages";
CREATE TRIGGER notify_update AFTER UPDATE ON "messages" REFERENCING OLD TABLE AS old_rows NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION trigger_notify_change('conversation_id');
