"""`vncaudit schema`: print the JSON Schema of the report (schema version 1).

Owns: the command. Must not: hold the schema (that is `vncaudit.report.schema`, the file the
package ships) or validate anything.
"""

from __future__ import annotations

import sys

from vncaudit.cli.program import app


@app.command(epilog="""Examples:

  vncaudit schema > vncaudit-report.schema.json
  vncaudit scan 10.0.0.5 -o json | check-jsonschema --schemafile vncaudit-report.schema.json -""")
def schema() -> None:
    """Print the JSON Schema of the report (-o json; each -o jsonl line is a $defs/service).

    Draft 2020-12. The same file is in the package: vncaudit/report/schema/."""
    from vncaudit.report.schema import schema_text

    sys.stdout.write(schema_text())
