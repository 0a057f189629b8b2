package siklus.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import java.io.IOException;
import org.apache.kafka.common.serialization.Deserializer;

/**
 * One interaction event, decoded from the JSON form siklus reads
 * (processor/src/codec/json.rs): the fields the fold uses; the rest
 * (campaign_id, referee_id, properties, …) are skipped.
 */
final class Event {
    String eventId;
    String customerId;
    String eventType;
    long occurredAt;
    String channel;
    String orderId;
    boolean hasAmount;
    long amountMinor;
    String currency;
    String surveyType;
    boolean hasScore;
    int score;
    /** Why the record could not be decoded; null for a valid event. */
    String error;

    static final JsonFactory JSON = new JsonFactory();

    /** Never throws: an undecodable record comes back with {@link #error} set. */
    static Event parse(byte[] data) {
        Event e = new Event();
        if (data == null) {
            e.error = "null value";
            return e;
        }
        boolean hasTime = false;
        try (JsonParser p = JSON.createParser(data)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                e.error = "expected a JSON object";
                return e;
            }
            JsonToken t;
            while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
                String f = p.currentName();
                t = p.nextToken();
                switch (f) {
                    case "event_id":
                        e.eventId = text(p, t, f);
                        break;
                    case "customer_id":
                        e.customerId = text(p, t, f);
                        break;
                    case "event_type":
                        e.eventType = text(p, t, f);
                        break;
                    case "occurred_at":
                        if (t == JsonToken.VALUE_NUMBER_INT) {
                            e.occurredAt = p.getLongValue();
                            hasTime = true;
                        } else if (t == JsonToken.VALUE_STRING) {
                            e.occurredAt = Times.parse(p.getText());
                            hasTime = true;
                        } else if (t != JsonToken.VALUE_NULL) {
                            throw new IllegalArgumentException("occurred_at: expected a string or epoch milliseconds");
                        }
                        break;
                    case "channel":
                        e.channel = text(p, t, f);
                        break;
                    case "order_id":
                        e.orderId = text(p, t, f);
                        break;
                    case "currency":
                        e.currency = text(p, t, f);
                        break;
                    case "survey_type":
                        e.surveyType = text(p, t, f);
                        break;
                    case "amount_minor":
                        if (t == JsonToken.VALUE_NUMBER_INT) {
                            e.hasAmount = true;
                            e.amountMinor = p.getLongValue();
                        } else if (t != JsonToken.VALUE_NULL) {
                            throw new IllegalArgumentException("amount_minor: expected an integer");
                        }
                        break;
                    case "score":
                        if (t == JsonToken.VALUE_NUMBER_INT) {
                            e.hasScore = true;
                            e.score = p.getIntValue();
                        } else if (t != JsonToken.VALUE_NULL) {
                            throw new IllegalArgumentException("score: expected an integer");
                        }
                        break;
                    default:
                        p.skipChildren();
                }
            }
        } catch (IOException | RuntimeException ex) {
            e.error = String.valueOf(ex.getMessage());
            return e;
        }
        if (e.eventId == null || e.eventId.isEmpty()) {
            e.error = "missing event_id";
        } else if (e.customerId == null || e.customerId.isEmpty()) {
            e.error = "missing customer_id";
        } else if (e.eventType == null) {
            e.error = "missing event_type";
        } else if (!hasTime) {
            e.error = "missing occurred_at";
        } else if (e.hasAmount && e.amountMinor < 0) {
            e.error = "negative amount_minor";
        }
        return e;
    }

    private static String text(JsonParser p, JsonToken t, String field) throws IOException {
        if (t == JsonToken.VALUE_NULL) {
            return null;
        }
        if (t != JsonToken.VALUE_STRING) {
            throw new IllegalArgumentException(field + ": expected a string");
        }
        return p.getText();
    }

    /** The value deserializer of the input topic. */
    static final class Serde implements Deserializer<Event> {
        @Override
        public Event deserialize(String topic, byte[] data) {
            return parse(data);
        }
    }
}
