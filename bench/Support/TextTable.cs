using System.Text;

namespace Shardwise.Bench.Support;

/// <summary>A Markdown table whose columns are padded to a common width (readable raw and rendered).</summary>
internal sealed class TextTable(params (string Title, bool RightAlign)[] columns)
{
    private readonly List<string[]> _rows = [];

    /// <summary>Adds a row (one cell per column).</summary>
    public void Add(params string[] cells)
    {
        if (cells.Length != columns.Length)
            throw new ArgumentException($"got {cells.Length} cells; the table has {columns.Length} columns.", nameof(cells));
        _rows.Add(cells);
    }

    /// <summary>The table as Markdown lines.</summary>
    public override string ToString()
    {
        var widths = new int[columns.Length];
        for (int c = 0; c < columns.Length; c++)
            widths[c] = Math.Max(3, _rows.Select(r => r[c].Length).Append(columns[c].Title.Length).Max());

        var sb = new StringBuilder();
        void Line(IReadOnlyList<string> cells)
        {
            sb.Append('|');
            for (int c = 0; c < columns.Length; c++)
            {
                string cell = columns[c].RightAlign ? cells[c].PadLeft(widths[c]) : cells[c].PadRight(widths[c]);
                sb.Append(' ').Append(cell).Append(" |");
            }
            sb.AppendLine();
        }

        Line(columns.Select(c => c.Title).ToArray());
        sb.Append('|');
        for (int c = 0; c < columns.Length; c++)
            sb.Append(' ').Append(columns[c].RightAlign ? new string('-', widths[c] - 1) + ":" : new string('-', widths[c])).Append(" |");
        sb.AppendLine();
        foreach (var row in _rows) Line(row);
        return sb.ToString();
    }
}
