"""One router per resource; routes only parse, call a service and shape the response."""
