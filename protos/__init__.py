"""The tracing protocol: messages in tracebus_ipc.proto, framing in framing.py.

Every envelope carries a request_id. A peer numbers its requests from 1; the
service's reply carries the same id; commands the service pushes on its own
carry 0. Each side keeps its own order: ZeroMQ delivers a DEALER's messages
in the order sent, and the service handles them in that order.

Producer port (ROUTER, anyone local may connect; producers are untrusted)::

    P: initialize_connection(hello, name, SMB hints, policy, claimed pid/uid)
    S: initialize_connection(hello reply [error], producer_id)     same request_id
    P: register_data_source(descriptor)            one per data source
    S: register_data_source(error or "")           same request_id
       ... when a session wants one of its data sources:
    S: setup_tracing(shm size, page size, shm_socket, shm_token)   first time only
    P: (on shm_socket: the token -> the memfd by SCM_RIGHTS; actors/smb_handoff.py)
    P: smb_mapped(error or "")                     the producer maps the SMB
    S: setup_data_source(instance_id, DataSourceConfig bytes)
    S: start_data_source(instance_id, DataSourceConfig bytes)
    P: register_trace_writer(writer_id, target_buffer)  before that writer's first commit
    P: data_source_started(instance_id)            only if will_notify_on_start
    P: commit_data(chunks_to_move, chunks_to_patch, flush_request_id, writer_stats)
       ... batched: one message per batch of chunks, never one per packet
    S: flush(flush_request_id, instance_ids)
    P: commit_data(..., flush_request_id)          after every writer of those instances
                                                   flushed (or a grace: the service scrapes)
    S: clear_incremental_state(instance_ids)
    S: stop_data_source(instance_id)
    P: commit_data(..., writer_stats) then data_source_stopped(instance_id)
                                                   (will_notify_on_stop: the SDK's default)

  DataSourceConfig.target_buffer is the service's global buffer id: a writer
  for an instance writes into that buffer and nowhere else. The producer's pid
  and uid come from the connection (libzmq's Peer-Address), never from what it
  says. A protocol_version other than the service's gets an error reply.

Consumer port (ROUTER on an owner-only socket; consumers are trusted)::

    C: hello                         S: hello (error if the version differs)
    C: enable_tracing(TraceConfig)   S: enable_tracing(started, session_id,
                                        unsupported_fields) or (disabled, error)
                                     ... and when the session ends, a second
                                     S: enable_tracing(disabled, error or "")
    C: start_tracing                 S: ack          (deferred_start sessions)
    C: flush(timeout_ms)             S: flush(success)
    C: disable_tracing               S: ack          once data sources stopped
    C: read_buffers                  S: read_buffers(slices, has_more) ... until
                                        has_more is false; all with the same id
    C: free_buffers                  S: ack
    C: get_trace_stats               S: trace_stats(TraceStats bytes)
    C: query_service_state           S: service_state
    C: observe_events(types)         S: ack, then events(...) with that request_id
                                        whenever something changes

  One session per consumer connection. A consumer that goes away frees it.
"""
