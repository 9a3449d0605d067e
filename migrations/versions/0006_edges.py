"""audit log: TRUNCATE refused too, and no role but its owner may change it

Revision ID: 0006
Revises: 0003
Create Date: 2026-11-30 03:55:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite has no TRUNCATE and no roles: its UPDATE and DELETE triggers (0003) are the whole guard there.
    if op.get_bind().dialect.name != "postgresql":
        return
    # Row triggers do not fire on TRUNCATE, which empties the table at once: a statement trigger refuses it.
    op.execute(
        "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
    )
    # An application role apart from the owner keeps INSERT and SELECT only; it cannot drop the triggers either,
    # which only the owner may. Roles granted more later are still stopped by the triggers.
    op.execute(
        """
        DO $$
        DECLARE grantee text;
        BEGIN
          FOR grantee IN
            SELECT DISTINCT g.grantee FROM information_schema.role_table_grants g
            JOIN pg_tables t ON t.tablename = g.table_name AND t.schemaname = g.table_schema
            WHERE g.table_name = 'audit_events' AND g.table_schema = current_schema()
              AND g.grantee <> t.tableowner AND g.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')
          LOOP
            EXECUTE 'REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM '
              || CASE WHEN grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(grantee) END;
          END LOOP;
        END $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
