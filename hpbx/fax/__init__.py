"""Virtual fax (issue 15): received pages to PDF; the native endpoint is not written yet."""
