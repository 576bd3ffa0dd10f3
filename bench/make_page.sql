-- bench.make_page(), shared by the parts of bench/ingest.sh (after bench/peer_ingest.sql, which makes the schema).

-- A page of `size` members: ids prefix-000001.., with the fields Mixpanel sends.
CREATE OR REPLACE FUNCTION bench.make_page(action text, cohort text, session text, prefix text,
                                           page_count int, total_pages int, first int, size int DEFAULT 1000)
RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object(
    'action', action,
    'parameters', jsonb_build_object(
      'mixpanel_project_id', '1001', 'mixpanel_cohort_id', cohort,
      'mixpanel_cohort_name', 'Bench ' || cohort, 'mixpanel_cohort_description', 'benchmark cohort',
      'mixpanel_session_id', session,
      'page_info', jsonb_build_object('total_pages', total_pages, 'page_count', page_count),
      'members', (SELECT jsonb_agg(jsonb_build_object(
          'mixpanel_distinct_id', prefix || i, 'email', prefix || i || '@example.com',
          'first_name', 'First' || i, 'last_name', 'Last' || i,
          'phone_number', '+1 555 01' || lpad((i % 100000)::text, 5, '0'),
          '$CleverTap_user_id', 'ct-' || prefix || i) ORDER BY i)
        FROM generate_series(first, first + size - 1) i)))
$$;
