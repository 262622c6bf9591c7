"""Contract tests: the product's requests, the simulator's responses and the catalogue's columns held
to Klaviyo's own OpenAPI document (``../shared/klaviyo/openapi-2026-07-15.json``), with the pinned
revision's differences (``endpoints.json``'s ``rev_2026_10_15_delta``) applied to campaigns, coupons
and templates. Run them alone with ``make contract``."""
