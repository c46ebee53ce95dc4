"""The clinicians' web application and FHIR API (``clinic serve``): Starlette over uvicorn,
server-rendered pages, sessions and tokens in PostgreSQL. Access rules are pure
(:mod:`clinic.web.access`); handlers are thin shells around them."""
