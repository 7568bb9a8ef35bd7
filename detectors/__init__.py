"""dcwatch analyzer: sources -> frames -> models -> decisions -> outputs."""
