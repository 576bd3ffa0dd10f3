-- The example of Mixpanel's Custom Webhook documentation, replayed page by page:
--   T:       add_members(A, B, C, D) | remove_members()
--   T+10min: B, D leave the cohort;  T+20min: E, F join it
--   T+30min: add_members(E, F)      | remove_members(B, D)
--   T+1h:    add_members()          | remove_members()      (nothing changed)
SET client_min_messages = warning;

CREATE FUNCTION pg_temp.sync(action text, session text, ids text[]) RETURNS jsonb
LANGUAGE sql AS $$
  SELECT cohortsync.ingest(jsonb_build_object(
    'action', action,
    'parameters', jsonb_build_object(
      'mixpanel_project_id', 1001,               -- ids may be numbers
      'mixpanel_cohort_id', '4242',
      'mixpanel_cohort_name', 'Power users',
      'mixpanel_cohort_description', 'Opened the app 5 days in a row',
      'mixpanel_session_id', session,
      'page_info', jsonb_build_object('total_pages', '1', 'page_count', 1),  -- or strings
      'members', coalesce((SELECT jsonb_agg(jsonb_build_object(
          'mixpanel_distinct_id', id,
          'email', lower(id) || '@example.com',
          'first_name', id, 'last_name', 'Doe',
          'phone_number', '+1 555 010 00' || ascii(id) % 10,
          '$CleverTap_user_id', 'ct-' || id) ORDER BY id)
        FROM unnest(ids) id), '[]'))))
$$;

-- T
SELECT pg_temp.sync('add_members', 'T', ARRAY['A', 'B', 'C', 'D']);
SELECT pg_temp.sync('remove_members', 'T', ARRAY[]::text[]);
-- T+30min
SELECT pg_temp.sync('add_members', 'T+30', ARRAY['E', 'F']);
SELECT pg_temp.sync('remove_members', 'T+30', ARRAY['B', 'D']);
-- T+1h
SELECT pg_temp.sync('add_members', 'T+60', ARRAY[]::text[]);
SELECT pg_temp.sync('remove_members', 'T+60', ARRAY[]::text[]);
-- Mixpanel re-sends T+30 after a mid-sync failure: nothing changes
SELECT pg_temp.sync('add_members', 'T+30', ARRAY['E', 'F']);
SELECT pg_temp.sync('remove_members', 'T+30', ARRAY['B', 'D']);

SELECT project_id, cohort_id, name, description, member_count, last_session_id
  FROM cohortsync.cohorts;

SELECT distinct_id, email, phone, first_name, last_name,
       properties ->> '$CleverTap_user_id' AS clevertap_id
  FROM cohortsync.members ORDER BY distinct_id;

SELECT id, distinct_id, change, session_id, properties ->> '$CleverTap_user_id' AS clevertap_id
  FROM cohortsync.membership_changes ORDER BY id;

SELECT session_id, action, total_pages, pages_received, state, members_added, members_removed
  FROM cohortsync.sync_sessions ORDER BY started_at, session_id, action;

SELECT session_id, action, page_count, member_count, times_received
  FROM cohortsync.sync_pages ORDER BY session_id, action, page_count;
