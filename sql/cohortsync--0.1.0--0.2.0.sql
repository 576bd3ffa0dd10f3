-- cohortsync 0.1.0 -> 0.2.0
--
-- 0.1.0 is the base script; CREATE EXTENSION cohortsync installs it and then runs
-- this file, so a fresh install and an upgraded one are built by the same
-- statements. Every change after 0.1.0 goes here (never into the 0.1.0 script).
\echo Use "ALTER EXTENSION cohortsync UPDATE TO '0.2.0'" to load this file. \quit
