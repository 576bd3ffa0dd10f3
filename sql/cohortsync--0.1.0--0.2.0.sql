-- cohortsync 0.1.0 -> 0.2.0
--
-- 0.1.0 is the base script; CREATE EXTENSION cohortsync installs it and then runs
-- this file, so a fresh install and an upgraded one are built by the same
-- statements. Every change after 0.1.0 goes here (never into the 0.1.0 script).
\echo Use "ALTER EXTENSION cohortsync UPDATE TO '0.2.0'" to load this file. \quit

-------------------------------------------------------------------------------
-- Strand D (ingest speed): staged_members without the four-column unique key.
-------------------------------------------------------------------------------
-- Staging a full-sync page used to probe and then insert into a primary key over
-- (project_id, cohort_id, session_id, distinct_id) for every member: two descents
-- of an index over four text columns, over half of the cost of staging a page.
-- Staged rows now carry the page they came with, and a page is staged with a plain
-- INSERT: a page that arrives again first deletes the rows it staged before, and a
-- member sent in two pages of one session counts from the higher page (the swap
-- picks it). The index serves the page deletes and the swap's scan of one session.
-- It leads with session_id alone (Mixpanel's session ids are unique per sync; the
-- statements still check project and cohort): every staged row descends it, and
-- comparing one text column is markedly cheaper than three equal ones first. Its keys
-- are one per page, so deduplicated btree leaves stay small. Deleting a cohort finds
-- its staged rows by a scan; staging only holds unfinished full syncs.
-- Rows staged by 0.1.0 have no page (NULL); they are unique per member already.
ALTER TABLE cohortsync.staged_members ADD COLUMN page_count integer;
ALTER TABLE cohortsync.staged_members DROP CONSTRAINT staged_members_pkey;
CREATE INDEX staged_members_page_idx
    ON cohortsync.staged_members (session_id, page_count);
COMMENT ON COLUMN cohortsync.staged_members.page_count IS
    'The page of the session the member came with; NULL for rows staged by 0.1.0.';
