"""What `lethe policy check` reads from a trigger's source: the tables it writes (lint.written_tables)."""

from __future__ import annotations

from lethe.policy.lint import written_tables


def test_the_tables_a_trigger_function_writes_are_read_from_its_source() -> None:
    source = """
    BEGIN
      INSERT INTO users_history SELECT TG_OP, now(), OLD.*;
      insert into audit.change_log (tbl, old) values (TG_TABLE_NAME, to_jsonb(OLD));
      INSERT INTO "Audit" . "Log" VALUES (OLD.email);
      UPDATE stats SET n = n - 1;
      MERGE INTO totals t USING (SELECT 1) s ON true WHEN MATCHED THEN UPDATE SET n = 0;
      PERFORM 1 FROM queue FOR UPDATE SKIP LOCKED;
      INSERT INTO seen VALUES (OLD.user_id) ON CONFLICT (user_id) DO UPDATE SET at = now();
      RETURN NULL;
    END"""
    assert written_tables(source) == [
        "users_history",
        "audit.change_log",
        '"Audit"."Log"',
        "stats",
        "totals",
        "seen",
    ]


def test_a_trigger_that_only_sets_its_own_row_writes_no_table() -> None:
    assert written_tables("BEGIN NEW.updated_at := now(); RETURN NEW; END") == []
