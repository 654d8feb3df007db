"""The service's routes, one router per area; `convplan.api.service.app` includes them."""
