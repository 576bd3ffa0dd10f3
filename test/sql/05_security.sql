-- Passcodes in transit: connect_clevertap warns when a passcode would cross the
-- network in clear text (plain http:// to a host other than the loopback).
CREATE EXTENSION cohortsync;
SET client_min_messages = warning;
BEGIN;
SET LOCAL log_statement = 'none';   -- as README.md recommends for calls holding a passcode
SELECT cohortsync.connect_clevertap('ct', 'ACC', 'cs-secret-05', 'eu1');
SELECT cohortsync.connect_clevertap('tls-proxy', 'ACC', 'cs-secret-05', 'eu1', 'https://proxy.example:8443');
SELECT cohortsync.connect_clevertap('local', 'ACC', 'cs-secret-05', 'eu1', 'http://127.0.0.1:8080');
SELECT cohortsync.connect_clevertap('local6', 'ACC', 'cs-secret-05', 'eu1', 'http://[::1]:8080/');
SELECT cohortsync.connect_clevertap('localname', 'ACC', 'cs-secret-05', 'eu1', 'http://LOCALHOST');
SELECT cohortsync.connect_clevertap('proxy', 'ACC', 'cs-secret-05', 'eu1', 'http://proxy.example:8080');
SELECT cohortsync.connect_clevertap('lookalike', 'ACC', 'cs-secret-05', 'eu1', 'http://127.0.0.1.evil.example');
SELECT cohortsync.connect_clevertap('userinfo', 'ACC', 'cs-secret-05', 'eu1', 'http://localhost@evil.example');
COMMIT;
SELECT name, cohortsync._clevertap_base_url(region, api_url) AS base_url
  FROM cohortsync.destinations ORDER BY name;
DROP EXTENSION cohortsync;
