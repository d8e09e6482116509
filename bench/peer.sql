-- The peer of `guestfeed bench feed`: the plan's `get_guest_event_messages_v2`
-- (../shared/seed/, "Phase 0, step 2") and its Phase 1 indexes, for benchmarking only.
--
-- The function body between the dollar quotes is the plan's, byte for byte.
-- Changes, all outside the body:
--   * it is created in the bench-only schema `bench_peer`, not `public`
--     (CREATE and COMMENT name `bench_peer.get_guest_event_messages_v2`);
--   * the plan's `GRANT EXECUTE ... TO authenticated` is left out: the role is
--     Supabase's and does not exist on a scratch server (the bench calls the
--     function as the database owner, so the grant changes nothing measured);
--   * Supabase's `auth.uid()` is created here, as Supabase defines it, since
--     the body calls it; the bench sets `request.jwt.claim.sub` before each
--     call as PostgREST does.
-- The loader (bench/peer.py) checks the body against the plan when the plan
-- file is present, and runs the two index statements after the data load.

CREATE SCHEMA IF NOT EXISTS auth;

-- Supabase (supabase/auth migrations): the JWT's `sub`, from the legacy
-- per-claim setting or the claims JSON.
CREATE OR REPLACE FUNCTION auth.uid()
RETURNS uuid
LANGUAGE sql STABLE
AS $$
  SELECT coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

CREATE SCHEMA IF NOT EXISTS bench_peer;

-- BEGIN plan function
CREATE OR REPLACE FUNCTION bench_peer.get_guest_event_messages_v2(
    p_event_id uuid,
    p_limit int DEFAULT 50,
    p_before timestamptz DEFAULT NULL
)
RETURNS TABLE(
    message_id uuid,
    content text,
    created_at timestamptz,
    delivery_status text,
    sender_name text,
    sender_avatar_url text,
    message_type text,
    is_own_message boolean,
    is_delivery_backed boolean
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    current_user_id uuid;
    guest_record RECORD;
BEGIN
    current_user_id := auth.uid();

    IF current_user_id IS NULL THEN
        RAISE EXCEPTION 'Authentication required';
    END IF;

    -- Verify user is a guest of this event
    SELECT eg.id, eg.user_id, eg.phone, eg.guest_name, eg.removed_at, eg.guest_tags
    INTO guest_record
    FROM public.event_guests eg
    WHERE eg.event_id = p_event_id
    AND eg.user_id = current_user_id;

    IF NOT FOUND THEN
        RAISE EXCEPTION 'Access denied: User is not a guest of this event';
    END IF;

    IF guest_record.removed_at IS NOT NULL THEN
        RAISE EXCEPTION 'Access denied: User has been removed from this event';
    END IF;

    RETURN QUERY
    WITH combined_messages AS (
        -- Direct messages from deliveries (UNCHANGED)
        SELECT DISTINCT
            m.id as message_id,
            m.content,
            m.created_at,
            md.sms_status as delivery_status,
            COALESCE(u.full_name, 'Host') as sender_name,
            u.avatar_url as sender_avatar_url,
            m.message_type::text,
            false as is_own_message,
            true as is_delivery_backed
        FROM public.message_deliveries md
        JOIN public.messages m ON m.id = md.message_id
        LEFT JOIN public.users u ON u.id = m.sender_user_id
        WHERE md.user_id = current_user_id
        AND m.event_id = p_event_id
        AND m.message_type = 'direct'
        AND (p_before IS NULL OR m.created_at < p_before)

        UNION ALL

        -- Announcements from messages (NEW READ PATH)
        SELECT DISTINCT
            m.id as message_id,
            m.content,
            m.created_at,
            'delivered'::text as delivery_status,
            COALESCE(u.full_name, 'Host') as sender_name,
            u.avatar_url as sender_avatar_url,
            m.message_type::text,
            false as is_own_message,
            false as is_delivery_backed
        FROM public.messages m
        LEFT JOIN public.users u ON u.id = m.sender_user_id
        WHERE m.event_id = p_event_id
        AND m.message_type = 'announcement'
        AND (p_before IS NULL OR m.created_at < p_before)

        UNION ALL

        -- Channels from messages with tag filtering (NEW READ PATH)
        SELECT DISTINCT
            m.id as message_id,
            m.content,
            m.created_at,
            'delivered'::text as delivery_status,
            COALESCE(u.full_name, 'Host') as sender_name,
            u.avatar_url as sender_avatar_url,
            m.message_type::text,
            false as is_own_message,
            false as is_delivery_backed
        FROM public.messages m
        LEFT JOIN public.users u ON u.id = m.sender_user_id
        JOIN public.scheduled_messages sm ON sm.event_id = m.event_id
        WHERE m.event_id = p_event_id
        AND m.message_type = 'channel'
        AND (p_before IS NULL OR m.created_at < p_before)
        -- Channel tag filtering: guest must have matching tags
        AND (
            -- No tag targeting (all guests)
            (sm.target_guest_tags IS NULL OR array_length(sm.target_guest_tags, 1) IS NULL)
            OR
            -- Guest has any required tags
            (
                sm.target_guest_tags IS NOT NULL
                AND guest_record.guest_tags && sm.target_guest_tags
            )
        )

        UNION ALL

        -- User's own messages (UNCHANGED)
        SELECT DISTINCT
            m.id as message_id,
            m.content,
            m.created_at,
            'sent'::text as delivery_status,
            COALESCE(u.full_name, guest_record.guest_name, 'You') as sender_name,
            u.avatar_url as sender_avatar_url,
            m.message_type::text,
            true as is_own_message,
            false as is_delivery_backed
        FROM public.messages m
        LEFT JOIN public.users u ON u.id = m.sender_user_id
        WHERE m.sender_user_id = current_user_id
        AND m.event_id = p_event_id
        AND (p_before IS NULL OR m.created_at < p_before)
    )
    SELECT
        cm.message_id,
        cm.content,
        cm.created_at,
        cm.delivery_status,
        cm.sender_name,
        cm.sender_avatar_url,
        cm.message_type,
        cm.is_own_message,
        cm.is_delivery_backed
    FROM combined_messages cm
    ORDER BY cm.created_at DESC
    LIMIT p_limit;
END;
$$;
-- END plan function

COMMENT ON FUNCTION bench_peer.get_guest_event_messages_v2(uuid, int, timestamptz) IS
'V2 guest message feed that reads Direct from deliveries and Announcements/Channels from messages table. Controlled by feature flag.';

-- BEGIN plan indexes (Phase 1, step 2)
-- Index for message type filtering
CREATE INDEX IF NOT EXISTS idx_messages_event_type_created
ON public.messages(event_id, message_type, created_at DESC);

-- Index for scheduled message tag lookups
CREATE INDEX IF NOT EXISTS idx_scheduled_messages_event_tags
ON public.scheduled_messages(event_id)
WHERE target_guest_tags IS NOT NULL;
-- END plan indexes
