"""The Connect RPCs: one module per proto service, at the path of its proto package (`core/v1/project.py` is
`depot.core.v1.ProjectService`); `services.py` puts them all on their applications."""
